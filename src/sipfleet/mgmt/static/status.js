// sipfleet status page: polls the management API's JSON and fills the tables.
// Every value from the network goes into the page as text (textContent), never as HTML.
"use strict";

const POLL_MS = 3000;
// counters that count something going wrong (their sum is the "errors" tile)
const ERROR_COUNTER = /(error|shed|reject|dropped|refused|failure|misses|stray|foreign)/;

const token = new URLSearchParams(location.hash.slice(1)).get("token");
let previous = null; // {at, counters} of the last poll, for rates

async function getJson(path) {
  const headers = token ? { Authorization: "Bearer " + token } : {};
  const response = await fetch(path, { headers, cache: "no-store" });
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    body = null;
  }
  if (!response.ok && response.status !== 503) {
    const why = body && body.error ? body.error : response.statusText;
    throw new Error(path + ": " + response.status + " " + why);
  }
  return body;
}

function text(id, value) {
  document.getElementById(id).textContent = String(value);
}

function row(cells, className) {
  const tr = document.createElement("tr");
  if (className) tr.className = className;
  for (const value of cells) {
    const td = document.createElement("td");
    td.textContent = value === null || value === undefined ? "–" : String(value);
    tr.appendChild(td);
  }
  return tr;
}

function fill(tableId, rows) {
  const body = document.querySelector("#" + tableId + " tbody");
  body.replaceChildren(...rows);
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
}

function showStatus(status, now) {
  text("role", status.role);
  text("node", status.node);
  document.title = "sipfleet " + status.role + " " + status.node;
  text(
    "summary",
    "version " + status.version + ", up " + duration(status.uptime_s) + ", " +
      status.workers + " worker" + (status.workers === 1 ? "" : "s") + ", SIP on " +
      status.listen.join(", ")
  );
  const database = status.database || {};
  const processRows = [
    ["pid", status.pid],
    ["SIP listen", status.listen.join(", ")],
    ["queries in flight", database.in_flight],
    ["counters of", status.counters_of],
  ].map((cells) => row(cells));
  for (const db of database.databases || []) {
    let state = db.up ? "up" : "down: " + (db.error || "no answer");
    if (db.role === "replica" && db.up) state += db.lag_s === null ? ", lag unknown" : ", lag " + db.lag_s + " s";
    const tr = row([db.role + " " + db.name, state]);
    tr.dataset.state = db.up ? "up" : "down";
    processRows.push(tr);
  }
  fill("process", processRows);

  const counters = status.counters || {};
  const names = Object.keys(counters).sort();
  const seconds = previous ? (now - previous.at) / 1000 : 0;
  const rate = (name) =>
    previous && seconds > 0 && name in previous.counters
      ? ((counters[name] - previous.counters[name]) / seconds).toFixed(1)
      : null;
  // the counters that moved: a table of thirty zeros hides the one that matters
  const moved = names.filter((name) => counters[name] !== 0);
  const rows = moved.map((name) =>
    row([name, counters[name], rate(name)], ERROR_COUNTER.test(name) ? "error-counter" : "")
  );
  if (moved.length < names.length) {
    rows.push(row([(names.length - moved.length) + " more at 0", "", ""], "muted"));
  }
  fill("counters", rows);
  const requests = rate("requests_received");
  text("rate", requests === null ? "–" : requests);
  const errors = names.filter((name) => ERROR_COUNTER.test(name)).reduce((sum, name) => sum + counters[name], 0);
  text("errors", errors);
  document.getElementById("errors").classList.toggle("bad", errors > 0);
  previous = { at: now, counters };
}

function showPools(body) {
  document.getElementById("pools-section").hidden = false;
  const rows = [];
  for (const pool of Object.keys(body.pools)) {
    for (const target of body.pools[pool]) {
      const views = Object.entries(target.health)
        .map(([lb, view]) => lb + ": " + view.health + (view.stale ? " (stale)" : ""))
        .join(", ");
      const tr = row([pool, target.uri, target.weight, target.state, target.live || "unknown", views || "no LB has reported"]);
      tr.dataset.health = target.live || "unknown";
      tr.dataset.state = target.state;
      rows.push(tr);
    }
  }
  fill("pools", rows.length ? rows : [row(["no targets", "", "", "", "", ""])]);
}

function showGateways(body) {
  document.getElementById("gateways-section").hidden = false;
  text("lcr-version", body.version === null ? "(not loaded)" : "(version " + body.version + ")");
  const rows = body.gateways.map((gw) => {
    const port = gw.port === null ? "" : ":" + gw.port;
    const tr = row([gw.name, gw.host + port + (gw.transport ? " " + gw.transport : ""), gw.state, gw.failures]);
    tr.dataset.state = gw.state;
    return tr;
  });
  fill("gateways", rows.length ? rows : [row(["no gateways", "", "", ""])]);
}

function showRegistrations(body) {
  const domains = Object.entries(body.domains);
  text("registrations", domains.reduce((sum, [, counts]) => sum + counts.aors, 0));
  fill(
    "domains",
    domains.length
      ? domains.map(([domain, counts]) => row([domain, counts.aors, counts.bindings]))
      : [row(["nobody is registered", "", ""])]
  );
}

function showReady(body) {
  text("ready", body.ready ? "yes" : "no: " + body.problems.join("; "));
  document.getElementById("ready").classList.toggle("bad", !body.ready);
}

async function poll() {
  const problem = document.getElementById("problem");
  try {
    const status = await getJson("/status");
    showStatus(status, Date.now());
    const parts = [getJson("/ready").then(showReady), getJson("/registrations").then(showRegistrations)];
    if (status.role === "lb") parts.push(getJson("/lb/pools").then(showPools));
    if (status.role === "proxy") parts.push(getJson("/lcr/gateways").then(showGateways));
    await Promise.all(parts);
    problem.hidden = true;
    text("updated", new Date().toLocaleTimeString());
  } catch (error) {
    problem.textContent = String(error.message || error);
    problem.hidden = false;
  }
}

text("interval", POLL_MS / 1000);
poll();
setInterval(poll, POLL_MS);
