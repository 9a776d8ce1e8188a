// The admin page: enrolled people with their sample thumbnails (rename, delete, add
// photos) and the model being served with its training report.
//
// Talks to the enrollment API (streamer/enroll_api.py) with the session cookie.
// Photos are uploaded one request per file, so each stays under the server's
// upload limit and gets its own verdict.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const MODEL_EVERY_MS = 5000;
  const PEOPLE_EVERY_MS = 5000; // changes made elsewhere
  const UNREACHABLE =
    "the server cannot be reached: check that this device is on its network and that facestream is running";

  // ---- requests ---------------------------------------------------------------
  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: {} };
    if (body instanceof FormData) {
      init.body = body;
    } else if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let res;
    try {
      res = await fetch(path, init);
    } catch {
      // the browser's own words ("Failed to fetch") tell a user nothing
      return { status: 0, ok: false, reply: { reason: UNREACHABLE } };
    }
    if (res.status === 401) {
      location.assign("/login");
      throw new Error("signed out");
    }
    const reply = res.status === 204 ? null : await res.json().catch(() => null);
    return { status: res.status, ok: res.ok, reply };
  }

  function problem(result) {
    return (result.reply && result.reply.reason) || `the server answered ${result.status}`;
  }

  // A refused request: said in the notice; a person or sample that is gone (removed
  // from another tab, say) also refreshes the list, which still showed them.
  function refused(what, result) {
    notify(`${what}: ${problem(result)}`, "error");
    if (result.status === 404) loadPeople();
  }

  let noticeTimer = 0;
  function notify(text, kind = "info") {
    const notice = $("notice");
    notice.textContent = text;
    notice.dataset.kind = kind;
    notice.hidden = false;
    clearTimeout(noticeTimer);
    noticeTimer = setTimeout(() => { notice.hidden = true; }, kind === "error" ? 9000 : 4000);
  }

  // ---- people -----------------------------------------------------------------------
  function hue(name) {
    let h = 0;
    for (const ch of name) h = (h * 31 + ch.codePointAt(0)) % 360;
    return h;
  }

  function plural(n, word) {
    return `${n} ${word}${n === 1 ? "" : "s"}`;
  }

  async function loadPeople({ quiet = false } = {}) {
    const result = await api("GET", "/api/people");
    if (!result.ok) {
      if (!quiet) notify(`Cannot list people: ${problem(result)}`, "error");
      return;
    }
    showPeople(result.reply.people);
  }

  // Cards are kept from one listing to the next (an open rename form, an upload's report,
  // the focus stay); a person added, renamed, given samples or deleted elsewhere (another
  // tab, the phone's Enroll mode, the command line) shows as such.
  function showPeople(people) {
    $("people-count").textContent = String(people.length);
    $("people-empty").hidden = people.length > 0;
    const list = $("people");
    const cards = new Map([...list.querySelectorAll(".person-card")].map((c) => [c.dataset.id, c]));
    const samplesDue = [];
    const shown = people.map((person) => {
      let card = cards.get(person.id);
      if (!card) {
        card = personCard(person);
        if (person.sample_count > 0) samplesDue.push(person.id);
      } else if (card.person.sample_count !== person.sample_count) {
        samplesDue.push(person.id);
      }
      Object.assign(card.person, person);
      showPerson(card);
      return card;
    });
    for (const [id, card] of cards) {
      if (!people.some((p) => p.id === id)) card.remove();
    }
    shown.forEach((card, index) => {  // moved only when out of place: a moved card loses focus
      if (list.children[index] !== card) list.insertBefore(card, list.children[index] || null);
    });
    samplesDue.forEach(loadSamples);
  }

  function showPerson(card) {
    const person = card.person;
    const avatar = card.querySelector(".avatar");
    avatar.textContent = Array.from(person.name.trim())[0]?.toUpperCase() || "?";
    avatar.style.setProperty("--hue", hue(person.name));
    card.querySelector(".person-name").textContent = person.name;
    card.querySelector(".person-meta").textContent = plural(person.sample_count, "sample");
  }

  // ``card.person`` is kept up to date by showPeople: its handlers read it when they run.
  function personCard(listed) {
    const card = $("person-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = listed.id;
    const person = { ...listed };
    card.person = person;

    const renameForm = card.querySelector(".rename-form");
    const renameInput = renameForm.querySelector("input");
    renameInput.id = `rename-${person.id}`;
    renameForm.querySelector("label").htmlFor = renameInput.id;
    card.querySelector('[data-action="rename"]').addEventListener("click", () => {
      renameForm.hidden = false;
      renameInput.value = person.name;
      renameInput.focus();
      renameInput.select();
    });
    const closeRename = () => {
      renameForm.hidden = true;
      card.querySelector('[data-action="rename"]').focus();
    };
    card.querySelector('[data-action="cancel-rename"]').addEventListener("click", closeRename);
    renameInput.addEventListener("keydown", (event) => {
      if (event.key === "Escape") closeRename();
    });
    renameForm.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await api("PATCH", `/api/people/${person.id}`, { name: renameInput.value });
      if (!result.ok) {
        refused(`Cannot rename ${person.name}`, result);
        return;
      }
      notify(`Renamed ${person.name} to ${result.reply.name}.`);
      closeRename();
      loadPeople();
    });

    card.querySelector('[data-action="delete"]').addEventListener("click", () => confirmDelete(person));

    const picker = card.querySelector('input[type="file"]');
    picker.addEventListener("change", () => {
      const files = [...picker.files];
      picker.value = "";
      upload(person, files, card.querySelector(".upload-report"));
    });
    return card;
  }

  async function loadSamples(personId) {
    const result = await api("GET", `/api/people/${personId}/samples`);
    const card = document.querySelector(`.person-card[data-id="${personId}"]`);
    if (!result.ok || !card) return;
    const samples = result.reply.samples;
    card.querySelector(".person-meta").textContent = plural(samples.length, "sample");
    card.querySelector(".samples").replaceChildren(
      ...samples.map((sample) => {
        const item = document.createElement("li");
        item.className = "sample";
        const img = document.createElement("img");
        img.src = sample.thumbnail;
        img.alt = `Sample from ${sample.source}, ${sample.created.slice(0, 10)}`;
        img.loading = "lazy";
        img.width = 80;
        img.height = 80;
        const remove = document.createElement("button");
        remove.type = "button";
        remove.className = "sample-remove";
        const whose = card.person.name;
        remove.setAttribute("aria-label", `Remove ${whose}'s sample from ${sample.source}, ` +
          sample.created.slice(0, 10));
        remove.title = "Remove this sample";
        remove.textContent = "×";
        remove.addEventListener("click", () => confirmErase(
          "Remove this sample?",
          "This face sample will be erased, and the next model will be trained without it. " +
            "This cannot be undone.",
          "Remove",
          async () => {
            const done = await api("DELETE", `/api/samples/${sample.id}`);
            if (!done.ok) refused("Cannot remove the sample", done);
            else notify("The sample was removed.");
            loadSamples(personId);
          },
        ));
        const source = document.createElement("span");
        source.className = "sample-source";
        source.textContent = sample.source;
        item.append(img, source, remove);
        return item;
      }),
    );
  }

  async function upload(person, files, report) {
    report.replaceChildren();
    let accepted = 0;
    for (const file of files) {
      const line = document.createElement("li");
      line.textContent = `${file.name}: uploading…`;
      report.append(line);
      const form = new FormData();
      form.append("photo", file, file.name);
      const result = await api("POST", `/api/people/${person.id}/samples`, form);
      const verdict = result.reply && result.reply.files ? result.reply.files[0] : null;
      if (verdict) {
        line.textContent = `${file.name}: ${verdict.accepted ? "added" : verdict.reason}`;
        line.className = verdict.accepted ? "accepted" : "rejected";
        accepted += verdict.accepted ? 1 : 0;
      } else {
        line.textContent = `${file.name}: ${problem(result)}`;
        line.className = "rejected";
        if (result.status === 404) {
          refused(`Cannot add photos to ${person.name}`, result);
          return;
        }
      }
    }
    if (accepted) notify(`${plural(accepted, "photo")} added to ${person.name}.`);
    loadSamples(person.id);
  }

  // Erasing face data asks first, in the page's dialog; ``erase`` runs on its button.
  function confirmErase(title, text, button, erase) {
    const dialog = $("confirm");
    $("confirm-title").textContent = title;
    $("confirm-text").textContent = text;
    $("confirm-delete").textContent = button;
    dialog.returnValue = "";
    dialog.addEventListener("close", function onClose() {
      dialog.removeEventListener("close", onClose);
      if (dialog.returnValue === "delete") erase();
    });
    dialog.showModal();
  }

  function confirmDelete(person) {
    confirmErase(
      `Delete ${person.name}?`,
      `${plural(person.sample_count, "face sample")} will be erased, and the live video ` +
        "stops naming this person at once. This cannot be undone.",
      "Delete",
      async () => {
        const result = await api("DELETE", `/api/people/${person.id}`);
        if (!result.ok) {
          refused(`Cannot delete ${person.name}`, result);
          return;
        }
        notify(`${person.name} was deleted.`);
        // the focus, on this card's button, would fall to the page: the next card takes it
        const card = document.querySelector(`.person-card[data-id="${person.id}"]`);
        const next = card?.nextElementSibling || card?.previousElementSibling;
        await loadPeople();
        (next?.querySelector('[data-action="delete"]') || $("new-name")).focus();
      },
    );
  }

  $("add-person").addEventListener("submit", async (event) => {
    event.preventDefault();
    const input = $("new-name");
    const result = await api("POST", "/api/people", { name: input.value });
    if (!result.ok) {
      notify(`Cannot add the person: ${problem(result)}`, "error");
      return;
    }
    input.value = "";
    notify(`${result.reply.name} was added. Now give them a few photos.`);
    loadPeople();
  });

  // ---- the model ---------------------------------------------------------------------
  const FACTS = [
    ["created", "Trained"],
    ["head_kind", "Head"],
    ["threshold", "Threshold"],
    ["backbone", "Backbone"],
    ["store_revision", "Store revision"],
  ];
  let shownModel;

  function number(value) {
    if (typeof value !== "number") return String(value);
    return Number.isInteger(value) ? String(value) : value.toFixed(4);
  }

  async function loadModel() {
    const result = await api("GET", "/api/model");
    if (!result.ok) return;
    const model = result.reply;
    // the names follow the store (an erased person leaves them) between versions
    const shown = JSON.stringify([model.version, model.labels]);
    if (shown === shownModel) return;
    shownModel = shown;
    $("model-none").hidden = model.version !== null;
    $("model").hidden = model.version === null;
    $("model-version").textContent = model.version === null ? "none" : `v${model.version}`;
    if (model.version === null) return;

    $("model-facts").replaceChildren(
      ...FACTS.flatMap(([key, label]) => {
        const term = document.createElement("dt");
        term.textContent = label;
        const value = document.createElement("dd");
        value.textContent = number(model[key]);
        return [term, value];
      }),
      ...(() => {
        const term = document.createElement("dt");
        term.textContent = "People";
        const value = document.createElement("dd");
        value.textContent = model.labels.length ? model.labels.join(", ") : "nobody";
        return [term, value];
      })(),
    );
    // trainer/report.py: report.published = {head, threshold, reason, calibration}
    const published = model.report && model.report.published;
    $("model-reason").textContent = published && published.reason
      ? `Published the ${published.head} head: ${published.reason}.` : "";
    $("model-metrics").replaceChildren(
      ...Object.entries(model.metrics).map(([name, value]) => {
        const row = document.createElement("tr");
        const label = document.createElement("th");
        label.scope = "row";
        label.textContent = name.replaceAll("_", " ");
        const cell = document.createElement("td");
        cell.textContent = number(value);
        row.append(label, cell);
        return row;
      }),
    );
    $("model-plots").replaceChildren(
      ...model.plots.map((url) => {
        const figure = document.createElement("figure");
        const img = document.createElement("img");
        img.src = url;
        img.alt = `Training report plot ${url.split("/").pop()}`;
        img.loading = "lazy";
        const caption = document.createElement("figcaption");
        caption.textContent = url.split("/").pop().replace(".png", "");
        figure.append(img, caption);
        return figure;
      }),
    );
  }

  loadPeople();
  loadModel();
  setInterval(loadModel, MODEL_EVERY_MS);
  setInterval(() => {
    if (!document.hidden) loadPeople({ quiet: true });
  }, PEOPLE_EVERY_MS);
})();
