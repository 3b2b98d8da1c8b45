"""The cities the registry generator knows by name: display name, country, IANA time zone
and approximate district centroids."""

from __future__ import annotations

# Approximate district centroids (lat, lon) of cities the generator knows by name.
KNOWN_CITIES: dict[str, tuple[str, str, str, tuple[tuple[str, float, float], ...]]] = {
    "tashkent": (
        "Tashkent",
        "UZ",
        "Asia/Tashkent",
        (
            ("Bektemir", 41.209, 69.334),
            ("Chilanzar", 41.275, 69.204),
            ("Yashnobod", 41.292, 69.338),
            ("Mirobod", 41.289, 69.287),
            ("Mirzo Ulugbek", 41.340, 69.335),
            ("Olmazor", 41.352, 69.220),
            ("Sergeli", 41.225, 69.220),
            ("Shaykhontohur", 41.322, 69.230),
            ("Uchtepa", 41.290, 69.170),
            ("Yakkasaray", 41.280, 69.255),
            ("Yunusabad", 41.367, 69.285),
            ("Yangihayot", 41.200, 69.180),
        ),
    ),
    "almaty": (
        "Almaty",
        "KZ",
        "Asia/Almaty",
        (
            ("Alatau", 43.280, 76.830),
            ("Almaly", 43.255, 76.920),
            ("Auezov", 43.225, 76.850),
            ("Bostandyk", 43.205, 76.910),
            ("Zhetysu", 43.300, 76.940),
            ("Medeu", 43.240, 76.980),
            ("Nauryzbay", 43.190, 76.800),
            ("Turksib", 43.340, 76.960),
        ),
    ),
    "bishkek": (
        "Bishkek",
        "KG",
        "Asia/Bishkek",
        (
            ("Leninsky", 42.850, 74.560),
            ("Oktyabrsky", 42.845, 74.640),
            ("Pervomaisky", 42.880, 74.600),
            ("Sverdlovsky", 42.885, 74.650),
        ),
    ),
    "samarkand": (
        "Samarkand",
        "UZ",
        "Asia/Samarkand",
        (
            ("Registan", 39.655, 66.975),
            ("Siob", 39.672, 66.992),
            ("Bogishamol", 39.668, 66.930),
            ("Sogdiana", 39.640, 66.940),
            ("Temiryol", 39.630, 66.990),
        ),
    ),
    "astana": (
        "Astana",
        "KZ",
        "Asia/Almaty",
        (
            ("Almaty district", 51.150, 71.500),
            ("Baikonur", 51.170, 71.410),
            ("Yesil", 51.110, 71.420),
            ("Saryarka", 51.180, 71.440),
            ("Nura", 51.080, 71.470),
        ),
    ),
    "dushanbe": (
        "Dushanbe",
        "TJ",
        "Asia/Dushanbe",
        (
            ("Ismoili Somoni", 38.580, 68.760),
            ("Sino", 38.560, 68.720),
            ("Firdavsi", 38.540, 68.750),
            ("Shohmansur", 38.560, 68.800),
        ),
    ),
}
