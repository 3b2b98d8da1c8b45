// The local OpenID Connect provider of the tests: panva's oidc-provider, configured from a
// JSON file (argv[2]) the fixture writes: issuer, port, signing keys (private JWKs, so a
// test can also sign a token the provider would), clients, the accounts' claims, and the
// claims a machine client's access tokens carry; the API is the resource `resource` (an
// absolute URI, as resource indicators must be) whose tokens carry `audience`. Sign-in is
// the package's development interaction (any login, any password): a login names an
// account of the file.
import fs from "node:fs";
import Provider from "oidc-provider";

const config = JSON.parse(fs.readFileSync(process.argv[2], "utf-8"));
const accounts = config.accounts;

const provider = new Provider(config.issuer, {
  clients: config.clients,
  jwks: config.jwks,
  claims: { openid: ["sub"], profile: ["name", "preferred_username"], safecity: ["roles", "cities"] },
  scopes: ["openid", "profile", "safecity"],
  conformIdTokenClaims: false,
  async findAccount(ctx, id) {
    if (!(id in accounts)) return undefined;
    return { accountId: id, claims: async () => ({ sub: id, ...accounts[id] }) };
  },
  // First-party clients: the grant is given at sign-in, no consent screen.
  async loadExistingGrant(ctx) {
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope("openid profile safecity");
    grant.addOIDCClaims(["name", "roles", "cities"]);
    await grant.save();
    return grant;
  },
  async extraTokenClaims(ctx, token) {
    return token.kind === "ClientCredentials" ? config.machine_claims[token.clientId] : undefined;
  },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: (ctx, client, oneOf) => oneOf || config.resource,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: "api",
        audience: config.audience,
        accessTokenFormat: "jwt",
        accessTokenTTL: config.access_token_ttl || 300,
        jwt: { sign: { alg: "RS256" } },
      }),
    },
  },
});
provider.proxy = false;
// A 500 names its cause in the provider's log (the fixture keeps it per start).
provider.on("server_error", (ctx, err) => console.error("server_error", err));
provider.listen(config.port, "127.0.0.1", () => {
  console.log(`oidc-provider listening on ${config.issuer}`);
});
