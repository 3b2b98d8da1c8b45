// Node-RED settings for the ingest benchmark's peer (benchmarks/README.md): stock, except
// that the editor listens on loopback, nothing phones home and the flow's credentials are
// a plain file the benchmark writes into its temp user dir.
//
// BENCH_HTTP_MAX_SOCKETS caps the sockets of Node's global HTTP agent, which the
// influxdb node's client (node-influx) uses for every /write; unset, it is unlimited.
const http = require("http");

const cap = parseInt(process.env.BENCH_HTTP_MAX_SOCKETS || "0", 10);
if (cap > 0) {
  http.globalAgent.maxSockets = cap;
}

module.exports = {
  uiHost: "127.0.0.1",
  uiPort: parseInt(process.env.BENCH_UI_PORT || "1880", 10),
  flowFile: "flows.json",
  credentialSecret: false,
  flowFilePretty: true,
  diagnostics: { enabled: false, ui: false },
  telemetry: { enabled: false },
  runtimeState: { enabled: false, ui: false },
  externalModules: { autoInstall: false, palette: { allowInstall: false } },
  editorTheme: { projects: { enabled: false }, tours: false },
  logging: {
    console: { level: process.env.BENCH_LOG_LEVEL || "info", metrics: false, audit: false },
  },
};
