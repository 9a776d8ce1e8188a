// The phone page: camera -> WebRTC -> server; annotated video and events back.
//
// States (body[data-state]): idle, camera (asking for the camera), connecting,
// live, stalled (connected, no frames back), unstable (ICE trying to recover),
// retrying (the link was lost or the server could not be reached: a new start comes
// by itself after a back-off), error (stopped: what retrying cannot fix, such as a
// blocked camera or an offer the server refuses). Recognition events arrive on the
// data channel "events" as RecognitionEvent JSON: {time, stream, track, name,
// confidence, box}.
"use strict";

(() => {
  const SEEN_FOR_MS = 4000; // a name leaves the list this long after its last event
  const UNKNOWN_SEEN_FOR_MS = 1500; // unknown faces: only those of the latest restatement
  const GATHER_TIMEOUT_MS = 3000;
  const STATS_EVERY_MS = 1000;
  const CONFIG_EVERY_MS = 5000; // the model version in the footer
  const UNSTABLE_AFTER_MS = 4000; // "disconnected" this long counts as lost
  const STALLED_AFTER = 2; // stats ticks (seconds) without a new frame back: "no video"
  const CONNECT_TIMEOUT_MS = 15000; // from the answer to a connected link
  const REQUEST_TIMEOUT_MS = 15000; // a request to a server that went silent (Wi-Fi gone)
  const RETRY_FIRST_MS = 1000; // the wait before the first reconnection, doubled at each
  const RETRY_MAX_MS = 15000; // failure up to this
  const STAYED_UP_MS = 10000; // a link up this long starts the back-off from 1 s again
  const UNKNOWN = "unknown"; // the name of a face nobody known matches

  const $ = (id) => document.getElementById(id);
  const body = document.body;
  const remote = $("remote");
  const local = $("local");

  const app = {
    facing: "user",
    stream: null,
    pc: null,
    sender: null,
    config: null,
    people: new Map(), // "stream/track" -> {name, confidence, seen}
    statsTimer: 0,
    listTimer: 0,
    lostTimer: 0,
    connectTimer: 0,
    lastStats: null,
    attempt: 0, // counts starts and teardowns
    wasLive: false, // the link came up since the user started: a failure is worth retrying
    // reconnections in a row; when the next is due; since when the last link is up
    retry: { count: 0, at: 0, timer: 0, upSince: 0 },
  };

  // ---- modes ---------------------------------------------------------------
  // MODES.enroll is a placeholder for the enrollment work: it only shows its panel.
  const MODES = {
    recognize: { enter() {} },
    enroll: { enter() {} },
  };

  function setMode(mode) {
    body.dataset.mode = mode;
    for (const tab of document.querySelectorAll(".modes [data-mode]")) {
      tab.setAttribute("aria-selected", String(tab.dataset.mode === mode));
    }
    for (const panel of document.querySelectorAll("[data-panel]")) {
      panel.hidden = panel.dataset.panel !== mode;
    }
    MODES[mode].enter();
  }

  // ---- visible state ---------------------------------------------------------
  const STATUS = {
    idle: "Ready",
    camera: "Camera", // "Starting camera" would not fit a 390 px phone
    connecting: "Connecting",
    live: "Live",
    stalled: "No video", // and #stage-note says "from the server" on the video
    unstable: "Reconnecting",
    retrying: "Reconnecting",
    error: "Stopped",
  };
  // states in which the start button stops (a retrying page is still on: it comes back)
  const RUNNING = ["camera", "connecting", "live", "stalled", "unstable", "retrying"];

  function setState(state, overlay) {
    body.dataset.state = state;
    // said once per state: the countdown that #status-text shows while retrying is not
    $("status-text").textContent = $("status-said").textContent = STATUS[state];
    const running = RUNNING.includes(state);
    let label = "Start camera";
    if (running) label = "Stop";
    else if (state === "error") label = overlay?.action || "Try again";
    $("start-label").textContent = label;
    $("start").classList.toggle("danger", running);
    $("flip").disabled = !app.stream;
    $("figures").hidden = !["live", "stalled", "unstable"].includes(state);
    if (overlay) {
      $("overlay-title").textContent = overlay.title;
      $("overlay-text").textContent = overlay.text;
    }
  }

  // Something went wrong that trying again by itself would not fix: the camera goes off
  // too (its light should not stay on while nothing is sent); the start button offers
  // `action`.
  function fail(title, text, action = "Try again") {
    teardown(true);
    endRetries();
    setState("error", { title, text, action });
  }

  // ---- reconnecting by itself ---------------------------------------------------
  // The link was lost or the server could not be reached (restarted, a worker killed,
  // the Wi-Fi gone): start again after 1 s, 2 s, 4 s ... up to RETRY_MAX_MS, saying
  // when in the status. The camera stays on meanwhile (the feed comes back as it was)
  // except while the page is hidden, when no attempt is made either; "Reconnect now"
  // tries at once, Stop ends it.
  function retryLater(title, text) {
    teardown(false);
    const retry = app.retry;
    clearTimeout(retry.timer);
    // a link that drops as soon as it is up does not start the back-off again
    if (retry.upSince && performance.now() - retry.upSince >= STAYED_UP_MS) retry.count = 0;
    retry.upSince = 0;
    retry.count += 1;
    retry.at = performance.now() + Math.min(RETRY_FIRST_MS * 2 ** (retry.count - 1), RETRY_MAX_MS);
    setState("retrying", { title, text });
    if (document.visibilityState === "hidden") releaseCamera();
    tickRetry();
  }

  function tickRetry() {
    const retry = app.retry;
    clearTimeout(retry.timer);
    if (body.dataset.state !== "retrying") return;
    if (document.visibilityState === "hidden") {
      $("status-text").textContent = STATUS.retrying;
      $("retry-when").textContent = "Reconnects when this page is shown again.";
      return; // visibilitychange resumes
    }
    const left = retry.at - performance.now();
    if (left <= 0) {
      start();
      return;
    }
    const seconds = Math.ceil(left / 1000);
    $("status-text").textContent = `Retry in ${seconds} s`;
    $("retry-when").textContent = retry.count === 1
      ? `Reconnecting in ${seconds} s.`
      : `Reconnecting in ${seconds} s (attempt ${retry.count}).`;
    retry.timer = setTimeout(tickRetry, left - (seconds - 1) * 1000);
  }

  function retryNow() {
    if (body.dataset.state === "retrying") start();
  }

  function endRetries() {
    clearTimeout(app.retry.timer);
    app.retry.count = 0;
    app.retry.upSince = 0;
    app.wasLive = false;
  }

  function releaseCamera() {
    if (!app.stream) return;
    app.stream.getTracks().forEach((t) => t.stop());
    app.stream = null;
    local.srcObject = null;
    local.hidden = true;
    $("flip").disabled = true;
  }

  // A request's failure that a later try may not meet: no network, no answer in
  // time, or the server (or a proxy in front of it) failing or restarting.
  function passing(err) {
    return err instanceof TypeError || err?.name === "TimeoutError" || err?.name === "AbortError" ||
      err?.status >= 500 || err?.status === 429;
  }

  function request(url, options = {}) {
    const signal = AbortSignal.timeout ? AbortSignal.timeout(REQUEST_TIMEOUT_MS) : undefined;
    return fetch(url, { credentials: "same-origin", signal, ...options });
  }

  // ---- camera ----------------------------------------------------------------
  async function openCamera(facing) {
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw Object.assign(new Error("insecure"), { name: "InsecureContext" });
    }
    return navigator.mediaDevices.getUserMedia({
      audio: false,
      video: {
        facingMode: { ideal: facing },
        width: { ideal: 640 },
        height: { ideal: 480 },
        frameRate: { ideal: 15, max: 30 },
      },
    });
  }

  function cameraProblem(err) {
    switch (err.name) {
      case "NotAllowedError":
      case "SecurityError":
        return ["Camera access is blocked",
          "Allow this site to use the camera (in the address bar or the browser's site settings), then try again."];
      case "NotFoundError":
      case "OverconstrainedError":
        return ["No camera found", "This device has no camera facestream can use."];
      case "NotReadableError":
        return ["The camera is busy", "Another app is using the camera. Close it, then try again."];
      case "InsecureContext":
        return ["The camera needs HTTPS",
          "Browsers only open the camera on a secure page. Open the https:// address the server printed."];
      default:
        return ["The camera did not start", err.message || String(err)];
    }
  }

  function showLocal(stream) {
    local.srcObject = stream;
    local.hidden = false;
    local.classList.toggle("mirror", app.facing === "user");
    local.play().catch(() => {});
  }

  // Shown once the browser lists two cameras (before the first permission it may list
  // none), so that a one-camera device never shows it.
  async function updateFlipButton() {
    try {
      const devices = await navigator.mediaDevices.enumerateDevices();
      const cameras = devices.filter((d) => d.kind === "videoinput");
      $("flip").hidden = cameras.length < 2;
    } catch {
      $("flip").hidden = false; // cannot tell: offer it
    }
  }

  async function flipCamera() {
    if (!app.stream) return;
    const facing = app.facing === "user" ? "environment" : "user";
    let stream;
    try {
      app.stream.getTracks().forEach((t) => t.stop()); // phones allow one open camera
      stream = await openCamera(facing);
    } catch (err) {
      const [title, text] = cameraProblem(err);
      fail(title, text);
      return;
    }
    app.facing = facing;
    app.stream = stream;
    showLocal(stream);
    if (app.sender) await app.sender.replaceTrack(stream.getVideoTracks()[0]);
  }

  // ---- connection --------------------------------------------------------------
  // ``quiet``: the periodic refresh of the model version, which leaves a live stream
  // alone when the sign-in has lapsed (the next start goes to the login page)
  async function loadConfig({ quiet = false } = {}) {
    const res = await request("/api/config");
    if (res.status === 401 && !quiet) {
      location.assign("/login");
      throw new Error("signed out");
    }
    if (!res.ok) {
      throw Object.assign(new Error(`configuration request failed (${res.status})`),
        { status: res.status });
    }
    app.config = await res.json();
    const version = app.config.bundle_version;
    $("model-version").textContent = version == null ? "No model published yet" : `Model v${version}`;
  }

  function waitForGathering(pc) {
    if (pc.iceGatheringState === "complete") return Promise.resolve();
    return new Promise((resolve) => {
      const done = () => {
        if (pc.iceGatheringState === "complete") {
          pc.removeEventListener("icegatheringstatechange", done);
          resolve();
        }
      };
      pc.addEventListener("icegatheringstatechange", done);
      setTimeout(resolve, GATHER_TIMEOUT_MS);
    });
  }

  async function connect() {
    const iceServers = (app.config.ice_servers || []).map((s) => ({ ...s }));
    const pc = new RTCPeerConnection({ iceServers });
    app.pc = pc;
    const channel = pc.createDataChannel("events");
    channel.onmessage = (e) => onEvent(e.data);
    // enroll.js (the Enroll mode) talks to the server over this same channel.
    const announce = (ch) =>
      document.dispatchEvent(new CustomEvent("facestream:channel", { detail: { channel: ch } }));
    channel.onopen = () => announce(channel);
    channel.onclose = () => announce(null);
    const track = app.stream.getVideoTracks()[0];
    app.sender = pc.addTransceiver(track, { direction: "sendrecv", streams: [app.stream] }).sender;
    pc.ontrack = (e) => {
      remote.srcObject = e.streams[0] || new MediaStream([e.track]);
      remote.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => onConnectionState(pc);

    await pc.setLocalDescription(await pc.createOffer());
    await waitForGathering(pc);
    const res = await request("/api/webrtc/offer", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
    });
    if (app.pc !== pc) return; // stopped meanwhile
    if (res.status === 401) {
      location.assign("/login");
      return;
    }
    if (!res.ok) {
      const reply = await res.json().catch(() => ({}));
      const reason = reply.reason || `the server answered ${res.status}`;
      if (app.pc !== pc) return;
      if (res.status === 503) retryLater("The server is busy", reason);
      else if (passing({ status: res.status })) retryLater("The server could not take the video", reason);
      else fail("The server refused the video", reason); // a 4xx: this offer would fail again
      return;
    }
    const answer = await res.json();
    if (app.pc !== pc) return;
    await pc.setRemoteDescription(answer);
    app.connectTimer = setTimeout(() => {
      if (app.pc === pc && pc.connectionState !== "connected") {
        const title = "The video link did not come up";
        const text = "The server answered, but no route between this device and it worked. " +
          "Use the same Wi-Fi as the server, or ask its owner to configure a TURN server.";
        // a link that worked before may come back (the Wi-Fi returning); one that never
        // came up needs another network or a TURN server
        if (app.wasLive) retryLater(title, text);
        else fail(title, text);
      }
    }, CONNECT_TIMEOUT_MS);
  }

  function onConnectionState(pc) {
    if (app.pc !== pc) return;
    clearTimeout(app.lostTimer);
    switch (pc.connectionState) {
      case "connected":
        clearTimeout(app.connectTimer);
        app.wasLive = true;
        app.retry.upSince = performance.now();
        setState("live");
        break;
      case "disconnected":
        setState("unstable");
        app.lostTimer = setTimeout(() => {
          if (app.pc === pc && pc.connectionState !== "connected") lost();
        }, UNSTABLE_AFTER_MS);
        break;
      case "failed":
      case "closed":
        lost();
        break;
      default:
        break;
    }
  }

  function lost() {
    retryLater("Connection lost",
      "The video stopped coming back. Check the Wi-Fi, and that the server is still running.");
  }

  // ---- start / stop ---------------------------------------------------------------
  async function start() {
    clearTimeout(app.retry.timer);
    const attempt = ++app.attempt; // a stop or a failure meanwhile makes this one stale
    const current = () => attempt === app.attempt;
    const again = app.retry.count > 0;
    try {
      if (!app.stream || app.stream.getVideoTracks().every((t) => t.readyState === "ended")) {
        setState("camera", { title: "Allow the camera", text: "Your browser asks whether facestream may use the camera." });
        const stream = await openCamera(app.facing);
        if (!current()) {
          stream.getTracks().forEach((t) => t.stop());
          return;
        }
        app.stream = stream;
      }
    } catch (err) {
      if (current()) fail(...cameraProblem(err));
      return;
    }
    showLocal(app.stream);
    updateFlipButton();
    setState("connecting", again
      ? { title: "Reconnecting", text: `Setting up the video link again (attempt ${app.retry.count}).` }
      : { title: "Connecting", text: "Setting up the video link with the server." });
    try {
      await loadConfig();
      if (current()) await connect();
    } catch (err) {
      if (!current()) return;
      // a fetch that cannot connect fails with a TypeError whose words ("Failed to
      // fetch") tell a user nothing
      if (passing(err)) {
        retryLater("Cannot reach the server", err.status
          ? `The server answered ${err.status}: it may be restarting.`
          : "Check that this device is on the server's network and that facestream is running.");
      } else {
        fail("Cannot reach the server", err.message || String(err));
      }
      return;
    }
    if (!current() || !app.pc) return;
    clearInterval(app.statsTimer);
    app.statsTimer = setInterval(updateStats, STATS_EVERY_MS);
  }

  function teardown(stopCamera) {
    app.attempt += 1;
    clearInterval(app.statsTimer);
    clearTimeout(app.lostTimer);
    clearTimeout(app.connectTimer);
    app.lastStats = null;
    if (app.pc) {
      const pc = app.pc;
      app.pc = null;
      app.sender = null;
      pc.close();
    }
    remote.srcObject = null;
    if (stopCamera && app.stream) {
      app.stream.getTracks().forEach((t) => t.stop());
      app.stream = null;
      local.srcObject = null;
      local.hidden = true;
    }
    app.people.clear();
    renderPeople();
  }

  function stop() {
    teardown(true);
    endRetries();
    setState("idle", {
      title: "See who is in view",
      text: "Start the camera and point it at people. Their names appear on their faces, live.",
    });
  }

  function toggle() {
    if (RUNNING.includes(body.dataset.state)) stop();
    else start();
  }

  // ---- who is in view ---------------------------------------------------------------
  // One entry per track. Every second the server restates the visible tracks and then
  // lists them all in a "presence" message: a track it does not list has left the
  // picture (or a scene cut ended it). An entry not refreshed for SEEN_FOR_MS has left
  // too, when nothing comes (the video stalled).
  function onEvent(data) {
    let event;
    try {
      event = JSON.parse(data);
    } catch {
      return;
    }
    if (event.type === "presence" && Array.isArray(event.tracks)) {
      const inView = new Set(event.tracks.map((track) => `${event.stream}/${track}`));
      for (const key of app.people.keys()) {
        if (!inView.has(key)) app.people.delete(key);
      }
      renderPeople();
      return;
    }
    if (typeof event.type === "string") {
      // typed messages (enrollment progress) are for enroll.js, not the who-is-here list
      document.dispatchEvent(new CustomEvent("facestream:message", { detail: { message: event } }));
      return;
    }
    if (typeof event.name !== "string" || event.track === undefined) return;
    app.people.set(`${event.stream}/${event.track}`, {
      name: event.name,
      confidence: Number(event.confidence) || 0,
      seen: performance.now(),
    });
    renderPeople();
  }

  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function personItem(name, unknown) {
    const item = document.createElement("li");
    item.className = unknown ? "person unknown" : "person";
    const avatar = document.createElement("span");
    avatar.className = "avatar";
    avatar.textContent = unknown ? "?" : Array.from(name.trim())[0]?.toUpperCase() || "?";
    if (!unknown) avatar.style.setProperty("--hue", hue(name));
    const label = document.createElement("span");
    label.className = "person-name";
    label.textContent = name;
    const meter = document.createElement("span");
    meter.className = "confidence";
    item.append(avatar, label, meter);
    return item;
  }

  // Items are kept per name (their entrance animation plays once, not at each render).
  const items = new Map(); // name, or UNKNOWN -> <li>

  function renderPeople() {
    const now = performance.now();
    const known = new Map(); // name -> best confidence
    let unknown = 0;
    for (const [key, entry] of app.people) {
      if (now - entry.seen > (entry.name === UNKNOWN ? UNKNOWN_SEEN_FOR_MS : SEEN_FOR_MS)) {
        app.people.delete(key);
      } else if (entry.name === UNKNOWN) {
        unknown += 1;
      } else {
        known.set(entry.name, Math.max(known.get(entry.name) ?? 0, entry.confidence));
      }
    }
    const names = [...known.keys()].sort((a, b) => a.localeCompare(b));
    const shown = [];
    for (const name of names) {
      if (!items.has(name)) items.set(name, personItem(name, false));
      items.get(name).lastChild.textContent = `${Math.round(known.get(name) * 100)}%`;
      shown.push(items.get(name));
    }
    if (unknown) {
      if (!items.has(UNKNOWN)) items.set(UNKNOWN, personItem("", true));
      const item = items.get(UNKNOWN);
      item.querySelector(".person-name").textContent = unknown === 1 ? "Unknown face" : `${unknown} unknown faces`;
      shown.push(item);
    }
    for (const [key, item] of items) {
      if (!shown.includes(item)) items.delete(key);
    }
    const list = $("people");
    shown.forEach((item, index) => {
      if (list.children[index] !== item) list.insertBefore(item, list.children[index] || null);
    });
    while (list.children.length > shown.length) list.lastChild.remove();
    $("people-count").textContent = String(names.length);
    $("people-empty").hidden = shown.length > 0;
  }

  // ---- figures ---------------------------------------------------------------------
  async function updateStats() {
    const pc = app.pc;
    if (!pc) return;
    let report;
    try {
      report = await pc.getStats();
    } catch {
      return;
    }
    let pairId = null;
    let rtt = null;
    let inbound = null;
    report.forEach((s) => {
      if (s.type === "transport" && s.selectedCandidatePairId) pairId = s.selectedCandidatePairId;
      if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") inbound = s;
    });
    report.forEach((s) => {
      if (s.type !== "candidate-pair" || s.currentRoundTripTime === undefined) return;
      if ((pairId && s.id === pairId) || (!pairId && s.nominated && s.state === "succeeded")) {
        rtt = s.currentRoundTripTime;
      }
    });
    let fps = inbound?.framesPerSecond;
    if (fps === undefined && inbound && app.lastStats) {
      const dt = (inbound.timestamp - app.lastStats.timestamp) / 1000;
      if (dt > 0) fps = (inbound.framesDecoded - app.lastStats.framesDecoded) / dt;
    }
    // the link can stay "connected" for seconds after the server went away: frames that
    // stop coming back say so at once
    const frozen = inbound && app.lastStats && inbound.framesDecoded === app.lastStats.framesDecoded;
    app.stalledTicks = frozen ? (app.stalledTicks || 0) + 1 : 0;
    if (body.dataset.state === "live" && app.stalledTicks >= STALLED_AFTER) setState("stalled");
    else if (body.dataset.state === "stalled" && !frozen) setState("live");
    app.lastStats = inbound;
    $("fps").textContent = fps === undefined ? "–" : String(Math.round(fps));
    $("rtt").textContent = rtt === null ? "–" : String(Math.round(rtt * 1000));
  }

  // ---- wiring ------------------------------------------------------------------------
  $("start").addEventListener("click", toggle);
  $("flip").addEventListener("click", flipCamera);
  $("retry-now").addEventListener("click", retryNow);
  // a hidden page makes no attempts and lets the camera go; shown again, it tries
  document.addEventListener("visibilitychange", () => {
    if (body.dataset.state !== "retrying") return;
    if (document.visibilityState === "hidden") releaseCamera();
    tickRetry();
  });
  window.addEventListener("online", retryNow);
  for (const tab of document.querySelectorAll(".modes [data-mode]")) {
    tab.addEventListener("click", () => setMode(tab.dataset.mode));
  }
  remote.addEventListener("loadedmetadata", () => {
    if (remote.videoWidth && remote.videoHeight) {
      $("stage").style.setProperty("--ratio", `${remote.videoWidth} / ${remote.videoHeight}`);
    }
  });
  app.listTimer = setInterval(renderPeople, 500);
  window.addEventListener("pagehide", () => teardown(true));
  loadConfig().catch(() => {});
  // the trainer publishes while phones stream: the footer follows the model served
  setInterval(() => {
    if (!document.hidden) loadConfig({ quiet: true }).catch(() => {});
  }, CONFIG_EVERY_MS);
  updateFlipButton();
  setState("idle");
})();
