// Times as the city reads them: in the city's time zone, with the zone's name shown.

let zone = "UTC";

export function setTimeZone(timeZone) {
  try {
    new Intl.DateTimeFormat(undefined, { timeZone });
    zone = timeZone;
  } catch {
    zone = "UTC"; // an unknown zone name: UTC, and say so
  }
}

export function clock(ts) {
  return new Date(ts).toLocaleTimeString(undefined, {
    timeZone: zone,
    hour: "2-digit",
    minute: "2-digit",
    second: "2-digit",
    timeZoneName: "short",
  });
}
