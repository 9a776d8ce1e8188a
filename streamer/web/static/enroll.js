// The phone page's Enroll mode: type a name, look at the camera, follow the guidance.
//
// Protocol (streamer/live_enroll.py), on the "events" data channel that app.js opens:
//   page -> server  {"type": "enroll", "name": "..."}      start
//   page -> server  {"type": "enroll", "action": "cancel"}  stop
//   server -> page  {"type": "enroll", "state", "person", "count", "target",
//                    "pose", "guidance", "reason", "person_id", "existing"}
//
// Wiring with app.js, through document events (no globals):
//   "facestream:channel"  detail {channel}  the events channel opened (channel) or
//                                            closed (null)
//   "facestream:message"  detail {message}  a parsed data-channel message with a "type"
// The module fills the page's [data-panel="enroll"] section itself.
"use strict";

(() => {
  const panel = document.querySelector('[data-panel="enroll"]');
  if (!panel) return;

  const ARROWS = { straight: "●", left: "←", right: "→", up: "↑", any: "↻" };
  const RING = 2 * Math.PI * 52; // circumference of the progress ring (r = 52)

  const sheet = document.createElement("link");
  sheet.rel = "stylesheet";
  sheet.href = "/static/enroll.css";
  document.head.append(sheet);

  const state = { channel: null, phase: "idle", name: "" };

  // ---- the panel -------------------------------------------------------------------
  function element(tag, attributes = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (key === "text") node.textContent = value;
      else node.setAttribute(key, value);
    }
    node.append(...children);
    return node;
  }

  const svgNS = "http://www.w3.org/2000/svg";
  function ring() {
    const svg = document.createElementNS(svgNS, "svg");
    svg.setAttribute("viewBox", "0 0 120 120");
    svg.setAttribute("class", "enroll-ring");
    svg.setAttribute("aria-hidden", "true");
    for (const cls of ["ring-track", "ring-bar"]) {
      const circle = document.createElementNS(svgNS, "circle");
      circle.setAttribute("cx", "60");
      circle.setAttribute("cy", "60");
      circle.setAttribute("r", "52");
      circle.setAttribute("class", cls);
      svg.append(circle);
    }
    return svg;
  }

  const nameInput = element("input", {
    id: "enroll-name", type: "text", autocomplete: "off",
    autocapitalize: "words", spellcheck: "false", placeholder: "Their name, in any script",
  });
  const startButton = element("button", { type: "submit", class: "primary wide", text: "Start" });
  const form = element("form", { class: "enroll-form", autocomplete: "off" },
    element("label", { for: "enroll-name", text: "Name" }), nameInput, startButton);
  const hint = element("p", { class: "empty", id: "enroll-hint" });

  const bar = ring();
  const countText = element("span", { class: "enroll-count" });
  const progress = element("div", {
    class: "enroll-progress", role: "progressbar", "aria-valuemin": "0",
    "aria-label": "Samples collected",
  }, bar, countText);
  const arrow = element("span", { class: "enroll-arrow", "aria-hidden": "true" });
  const guidance = element("p", { class: "enroll-guidance", "aria-live": "assertive" });
  const who = element("p", { class: "enroll-who muted" });
  const cancelButton = element("button", { type: "button", class: "chip-button", text: "Cancel" });
  const live = element("div", { class: "enroll-live", hidden: "" },
    progress, arrow, guidance, who, cancelButton);

  const resultTitle = element("h4", { class: "enroll-result-title" });
  const resultText = element("p", { class: "muted" });
  const againButton = element("button", { type: "button", class: "primary wide", text: "Enroll someone else" });
  const result = element("div", { class: "enroll-result", hidden: "" }, resultTitle, resultText, againButton);

  panel.replaceChildren(
    element("div", { class: "panel-head" },
      element("h3", { text: "Enroll a person" }),
      element("span", { class: "badge", id: "enroll-phase", text: "Ready" })),
    element("p", { class: "muted enroll-intro",
      text: "Type their name, then have them look at the camera and follow the hints: " +
        "a few seconds of slow head turns is all it takes." }),
    form, hint, live, result,
  );

  // ---- state ---------------------------------------------------------------------------
  function setPhase(phase, label) {
    state.phase = phase;
    panel.dataset.enroll = phase;
    document.getElementById("enroll-phase").textContent = label;
    form.hidden = phase !== "idle"; // a result offers its own next step
    live.hidden = !(phase === "collecting" || phase === "saving");
    result.hidden = !(phase === "done" || phase === "failed");
    updateForm();
  }

  // The start button works only with the camera's link up and a name; the hint
  // below the form says which is missing.
  function updateForm() {
    const open = state.channel && state.channel.readyState === "open";
    const named = Boolean(nameInput.value.trim());
    startButton.disabled = !open || !named;
    if (!open) hint.textContent = "Start the camera first: the enrollment uses its video.";
    else hint.textContent = named ? "" : "Type their name to start.";
    hint.hidden = form.hidden || !hint.textContent;
  }

  function showProgress(count, target) {
    const fraction = target > 0 ? Math.min(count / target, 1) : 0;
    bar.querySelector(".ring-bar").style.strokeDasharray = `${RING * fraction} ${RING}`;
    countText.textContent = `${count}/${target}`;
    progress.setAttribute("aria-valuemax", String(target));
    progress.setAttribute("aria-valuenow", String(count));
  }

  // The server's reasons are clauses ("only 2 good views in 45 s ..."): shown alone,
  // they start with a capital.
  function sentence(text) {
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function send(message) {
    const channel = state.channel;
    if (!channel || channel.readyState !== "open") return false;
    channel.send(JSON.stringify(message));
    return true;
  }

  function onEnroll(message) {
    const count = Number(message.count) || 0;
    const target = Number(message.target) || 0;
    showProgress(count, target);
    who.textContent = message.person ? `Enrolling ${message.person}` : "";
    if (message.person) state.name = message.person; // as the server has it
    switch (message.state) {
      case "collecting":
        setPhase("collecting", "Collecting");
        guidance.textContent = message.guidance || "";
        arrow.textContent = ARROWS[message.pose] || "";
        arrow.dataset.pose = message.pose || "";
        break;
      case "saving":
        setPhase("saving", "Saving");
        guidance.textContent = "Saving…";
        arrow.textContent = "";
        break;
      case "done":
        setPhase("done", "Done");
        resultTitle.textContent = `${message.person} is enrolled`;
        resultText.textContent =
          `${count} face samples saved${message.existing ? " (added to the existing person)" : ""}. ` +
          "Their name shows in Recognize once the trainer has added them to the model " +
          "(seconds, while it runs).";
        againButton.textContent = "Enroll someone else";
        nameInput.value = "";
        break;
      case "failed":
        setPhase("failed", "Not saved");
        resultTitle.textContent = "Enrollment did not finish";
        resultText.textContent = sentence(message.reason || "something went wrong.");
        againButton.textContent = "Try again";
        break;
      case "cancelled":
        setPhase("idle", "Ready");
        break;
      default:
        break;
    }
  }

  // ---- wiring ----------------------------------------------------------------------------
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const name = nameInput.value.trim();
    if (!name) return;
    state.name = name;
    if (send({ type: "enroll", name })) {
      showProgress(0, 0);
      guidance.textContent = "Starting…";
      arrow.textContent = "";
      setPhase("collecting", "Starting");
    }
  });
  nameInput.addEventListener("input", updateForm);
  cancelButton.addEventListener("click", () => {
    send({ type: "enroll", action: "cancel" });
    setPhase("idle", "Ready");
  });
  againButton.addEventListener("click", () => {
    setPhase("idle", "Ready");
    nameInput.focus();
  });

  // A new channel is a new session (a reconnection, a restart): a result of the last
  // one is history, and "X is enrolled" may no longer be true (X deleted since), so the
  // panel starts afresh. A failure stays: it says what happened, and claims nothing.
  document.addEventListener("facestream:channel", (event) => {
    state.channel = event.detail.channel;
    if (!state.channel && state.phase === "collecting") {
      onEnroll({ state: "failed", reason: "The connection ended before the enrollment finished." });
    } else if (!state.channel && state.phase === "saving") {
      // the server may have stored the samples before the link went
      onEnroll({ state: "failed", reason: `The connection ended while saving, so ${state.name || "they"} ` +
        "may or may not be enrolled. Look on the People page (/admin) before enrolling them again." });
    } else if (state.channel && state.phase === "done") {
      setPhase("idle", "Ready");
    }
    updateForm();
  });
  document.addEventListener("facestream:message", (event) => {
    const message = event.detail.message;
    if (message && message.type === "enroll") onEnroll(message);
  });

  setPhase("idle", "Ready");
})();
