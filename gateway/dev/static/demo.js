// Demo page of session-events-gateway (development mode only). Plain browser JavaScript, no build step.
"use strict";

(() => {
  const TERMINAL = new Set(["completed", "expired", "failed", "cancelled"]);
  const METRICS_INTERVAL_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    tenant: $("tenant"),
    create: $("create"),
    sessionId: $("session-id"),
    current: $("current-status"),
    connection: $("connection"),
    connectionText: $("connection-text"),
    events: $("events"),
    message: $("message"),
    notice: $("notice"),
    token: $("token"),
    copyToken: $("copy-token"),
    watchCommand: $("watch-command"),
    copyWatch: $("copy-watch"),
    snippet: $("snippet"),
    copy: $("copy"),
    statusButtons: Array.from(document.querySelectorAll(".status-btn")),
    metricsState: $("metrics-state"),
    tenantState: $("tenant-state"),
    tenantSessions: $("tenant-sessions"),
  };

  let session = null; // {id, tenant, ticket, expiresAt, eventsUrl} (token instead of ticket with tickets off)
  let source = null; // the EventSource of the current session
  let finished = false;

  // --- helpers ---------------------------------------------------------------------------------

  function setConnection(state, text) {
    ui.connection.dataset.state = state;
    ui.connectionText.textContent = text;
  }

  function showMessage(text) {
    ui.message.textContent = text;
    ui.message.hidden = !text;
  }

  // Not an error: what the gateway did with a published status (e.g. "ignored: repeated status").
  function showNotice(text) {
    ui.notice.textContent = text;
    ui.notice.hidden = !text;
  }

  // The page holds a ticket for its one session (its backend part traded the tenant token for it);
  // only with tickets off does the dev server hand it a session-scoped token instead.
  function showToken() {
    const credential = session ? session.ticket || session.token : "";
    const flag = session && session.ticket ? "--ticket" : "--token";
    ui.token.textContent = credential || "–";
    const watch = session
      ? `${session.cli || "session-gateway"} watch ${session.id} --url ${window.location.origin} ${flag} ${credential}`
      : "";
    ui.watchCommand.textContent = watch || "–";
    ui.copyToken.disabled = !credential;
    ui.copyWatch.disabled = !watch;
  }

  async function copyText(button, text, node) {
    try {
      await navigator.clipboard.writeText(text);
      button.textContent = "Copied";
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(node);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      button.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { button.textContent = "Copy"; }, 1500);
  }

  function setStatusButtons(enabled) {
    for (const button of ui.statusButtons) button.disabled = !enabled;
  }

  async function postJson(url, body) {
    const response = await fetch(url, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    let payload = null;
    try {
      payload = await response.json();
    } catch (_) {
      payload = null;
    }
    if (!response.ok) {
      const detail = payload && (payload.detail || payload.message);
      const text = typeof detail === "string" ? detail : JSON.stringify(detail || payload);
      throw new Error(`HTTP ${response.status}: ${text}`);
    }
    return payload;
  }

  function timeOfDay(date) {
    const pad = (n, w = 2) => String(n).padStart(w, "0");
    return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}.${pad(date.getMilliseconds(), 3)}`;
  }

  function cell(text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  // --- the stream ------------------------------------------------------------------------------

  function addTransition(data, eventId) {
    const empty = ui.events.querySelector("tr.empty");
    if (empty) empty.remove();
    const row = document.createElement("tr");
    row.className = "fresh";
    row.dataset.status = data.status;
    row.appendChild(cell(timeOfDay(new Date())));
    const statusCell = document.createElement("td");
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = data.status;
    badge.textContent = data.status;
    statusCell.appendChild(badge);
    row.appendChild(statusCell);
    row.appendChild(cell(data.updatedAt || "", "mono"));
    row.appendChild(cell(eventId || "", "mono"));
    ui.events.appendChild(row);

    ui.current.textContent = data.status;
    ui.current.dataset.status = data.status;
  }

  function openStream(eventsUrl) {
    if (source) source.close();
    finished = false;
    setConnection("connecting", "connecting…");
    source = new EventSource(eventsUrl);
    const mine = source;

    mine.onopen = () => {
      if (mine === source) setConnection("open", "stream open");
    };
    mine.onmessage = (event) => {
      if (mine !== source) return;
      let data;
      try {
        data = JSON.parse(event.data);
      } catch (_) {
        return;
      }
      addTransition(data, event.lastEventId);
      if (TERMINAL.has(data.status)) {
        // The gateway ends the stream after a terminal status; stop EventSource from reconnecting.
        finished = true;
        mine.close();
        setConnection("ended", `stream closed: session ${data.status}`);
        setStatusButtons(false);
      }
    };
    mine.onerror = () => {
      if (mine !== source || finished) return;
      if (mine.readyState === EventSource.CLOSED) {
        setConnection("ended", "stream closed by the server");
      } else {
        setConnection("reconnecting", "reconnecting (resumes with Last-Event-ID)…");
      }
    };
  }

  // --- the tenant stream: every session of the tenant, one row each ---------------------------

  let tenantSource = null;
  let tenantOf = null; // the tenant tenantSource follows

  function upsertTenantRow(data) {
    const empty = ui.tenantSessions.querySelector("tr.empty");
    if (empty) empty.remove();
    let row = Array.from(ui.tenantSessions.rows).find((r) => r.dataset.id === data.id);
    if (!row) {
      row = document.createElement("tr");
      row.dataset.id = data.id;
      ui.tenantSessions.prepend(row);
    }
    row.dataset.status = data.status;
    const badge = document.createElement("span");
    badge.className = "badge";
    badge.dataset.status = data.status;
    badge.textContent = data.status;
    const statusCell = document.createElement("td");
    statusCell.appendChild(badge);
    row.replaceChildren(cell(data.id, "mono"), statusCell, cell(data.updatedAt || "", "mono"));
  }

  function openTenantStream(created) {
    if (!created.tenantEventsUrl) {
      ui.tenantState.textContent = "off: set GATEWAY_TENANT_STREAM_SCOPE (make run does)";
      return;
    }
    if (tenantSource && tenantOf === created.tenant) return; // already following this tenant
    if (tenantSource) tenantSource.close();
    ui.tenantSessions.replaceChildren();
    tenantOf = created.tenant;
    tenantSource = new EventSource(created.tenantEventsUrl);
    const mine = tenantSource;
    ui.tenantState.textContent = `connecting (tenant ${created.tenant})…`;
    mine.onopen = () => {
      if (mine === tenantSource) ui.tenantState.textContent = `stream open (tenant ${created.tenant})`;
    };
    mine.onmessage = (event) => {
      if (mine !== tenantSource) return;
      try {
        upsertTenantRow(JSON.parse(event.data));
      } catch (_) {
        // not an event of ours
      }
    };
    mine.addEventListener("deleted", (event) => {
      if (mine !== tenantSource) return;
      const id = JSON.parse(event.data).id;
      const row = Array.from(ui.tenantSessions.rows).find((r) => r.dataset.id === id);
      if (row) row.remove();
    });
    mine.addEventListener("truncated", (event) => {
      const counts = JSON.parse(event.data);
      ui.tenantState.textContent = `showing the ${counts.sent} most recent; ${counts.leftOut} older left out`;
    });
    mine.onerror = () => {
      if (mine !== tenantSource) return;
      ui.tenantState.textContent = mine.readyState === EventSource.CLOSED
        ? "tenant stream closed by the server"
        : "reconnecting (resumes with Last-Event-ID)…";
    };
  }

  async function createSession() {
    showMessage("");
    showNotice("");
    const tenant = ui.tenant.value.trim();
    if (!tenant) {
      showMessage("Tenant must not be blank: enter the tenant that owns the session (e.g. demo-tenant).");
      ui.tenant.focus();
      return;
    }
    ui.create.disabled = true;
    try {
      session = await postJson("/dev/sessions", { tenant });
      ui.sessionId.textContent = session.id;
      showToken();
      ui.current.textContent = "–";
      ui.current.dataset.status = "none";
      ui.events.replaceChildren();
      renderSnippet();
      openStream(session.eventsUrl);
      openTenantStream(session);
      setStatusButtons(true);
    } catch (error) {
      showMessage(`Could not create a session: ${error.message}`);
    } finally {
      ui.create.disabled = false;
    }
  }

  async function publishStatus(status) {
    if (!session) return;
    showMessage("");
    showNotice("");
    setStatusButtons(false);
    try {
      const published = await postJson(`/dev/sessions/${encodeURIComponent(session.id)}/status`, { status });
      if (published && published.outcome && published.outcome !== "applied") {
        showNotice(`"${status}" was published but ${published.outcome}: the stream gets nothing new.`);
      }
    } catch (error) {
      showMessage(`Could not publish "${status}": ${error.message}`);
    } finally {
      if (!finished) setStatusButtons(true);
    }
  }

  // --- metrics ---------------------------------------------------------------------------------

  // Parses the Prometheus text format into {name: [{labels, value}]}.
  function parseMetrics(text) {
    const samples = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const match = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
      if (!match) continue;
      const labels = {};
      if (match[2]) {
        for (const pair of match[2].slice(1, -1).matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
          labels[pair[1]] = pair[2];
        }
      }
      (samples[match[1]] = samples[match[1]] || []).push({ labels, value: Number(match[3]) });
    }
    return samples;
  }

  function sum(samples, name) {
    const list = samples[name];
    if (!list) return null;
    return list.reduce((total, sample) => total + sample.value, 0);
  }

  // The upper bound of the histogram bucket holding the median.
  function medianBucket(samples, name) {
    const buckets = (samples[`${name}_bucket`] || [])
      .map((s) => ({ le: s.labels.le === "+Inf" ? Infinity : Number(s.labels.le), count: s.value }))
      .sort((a, b) => a.le - b.le);
    const total = sum(samples, `${name}_count`);
    if (!buckets.length || !total) return null;
    const bucket = buckets.find((b) => b.count >= total / 2);
    return bucket ? bucket.le : null;
  }

  function formatCount(value) {
    return value === null ? "–" : Math.round(value).toLocaleString("en-US");
  }

  function formatSeconds(value) {
    if (value === null) return "–";
    if (value === Infinity) return "> 10 s";
    return value < 1 ? `≤ ${Math.round(value * 1000 * 10) / 10} ms` : `≤ ${value} s`;
  }

  async function pollMetrics() {
    try {
      const response = await fetch("/dev/metrics", { cache: "no-store" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const samples = parseMetrics(await response.text());
      $("m-open-streams").textContent = formatCount(sum(samples, "gateway_open_streams"));
      $("m-delivered").textContent = formatCount(sum(samples, "gateway_events_delivered_total"));
      $("m-consumed").textContent = formatCount(sum(samples, "gateway_records_consumed_total"));
      $("m-sessions").textContent = formatCount(sum(samples, "gateway_store_sessions"));
      $("m-lag").textContent = formatCount(sum(samples, "gateway_consumer_lag_records"));
      $("m-delay").textContent = formatSeconds(medianBucket(samples, "gateway_delivery_delay_seconds"));
      ui.metricsState.textContent = `updated ${timeOfDay(new Date())}`;
    } catch (error) {
      ui.metricsState.textContent = `metrics unavailable (${error.message})`;
    }
  }

  // --- the copy-paste snippet ------------------------------------------------------------------

  function renderSnippet() {
    const origin = window.location.origin;
    const sessionId = session ? session.id : "SESSION_ID";
    ui.snippet.textContent = [
      "// Your backend asks the gateway for a ticket (POST /session/{id}/ticket, its own token in the",
      "// Authorization header) and hands this page the session id and the ticket, never its token.",
      `const sessionId = "${sessionId}";`,
      'const ticket = "…";',
      "const url = `" + origin + "/session/${encodeURIComponent(sessionId)}/events?ticket=${encodeURIComponent(ticket)}`;",
      "const source = new EventSource(url);",
      "",
      "source.onmessage = (event) => {",
      "  const { id, status, updatedAt } = JSON.parse(event.data);",
      "  console.log(id, status, updatedAt); // active → fetched → completed | failed | expired | cancelled",
      '  if (["completed", "failed", "expired", "cancelled"].includes(status)) source.close();',
      "};",
      "source.onerror = () => {",
      "  // Network blip or redeploy: EventSource reconnects by itself and resumes with Last-Event-ID.",
      "  // It gives up for good on an HTTP error (401 expired ticket, 404 unknown session, 429/503 limits).",
      "  if (source.readyState === EventSource.CLOSED) console.warn(\"stream closed\");",
      "};",
    ].join("\n");
  }

  async function copySnippet() {
    try {
      await navigator.clipboard.writeText(ui.snippet.textContent);
      ui.copy.textContent = "Copied";
    } catch (_) {
      const range = document.createRange();
      range.selectNodeContents(ui.snippet);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(range);
      ui.copy.textContent = "Press Ctrl+C";
    }
    setTimeout(() => { ui.copy.textContent = "Copy"; }, 1500);
  }

  // --- wiring ----------------------------------------------------------------------------------

  ui.create.addEventListener("click", createSession);
  for (const button of ui.statusButtons) {
    button.addEventListener("click", () => publishStatus(button.dataset.status));
  }
  ui.copy.addEventListener("click", copySnippet);
  ui.copyToken.addEventListener("click", () => copyText(ui.copyToken, session ? session.ticket || session.token : "", ui.token));
  ui.copyWatch.addEventListener("click", () => copyText(ui.copyWatch, ui.watchCommand.textContent, ui.watchCommand));
  ui.tenant.addEventListener("keydown", (event) => {
    if (event.key === "Enter") createSession();
  });
  window.addEventListener("beforeunload", () => {
    if (source) source.close();
  });

  renderSnippet();
  pollMetrics();
  setInterval(pollMetrics, METRICS_INTERVAL_MS);
})();
