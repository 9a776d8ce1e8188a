// The login page: sign in straight away when the URL carries #token=... (the QR
// code printed by `facestream serve`); the fragment never reaches the server logs.
"use strict";

(() => {
  const form = document.getElementById("login-form");
  const input = document.getElementById("token");
  const reveal = document.getElementById("reveal");

  reveal.addEventListener("click", () => {
    const hidden = input.type === "password";
    input.type = hidden ? "text" : "password";
    reveal.textContent = hidden ? "Hide" : "Show";
    reveal.setAttribute("aria-label", hidden ? "Hide the token" : "Show the token");
  });

  // back to the page that asked for the sign-in (/login?next=/admin): the server
  // reads it from the form's address, and goes there only if it is one of its pages
  form.action = `/login${location.search}`;

  const fragment = new URLSearchParams(location.hash.slice(1));
  const token = fragment.get("token");
  if (token) {
    history.replaceState(null, "", location.pathname + location.search);
    input.value = token;
    form.submit();
  } else {
    input.focus();
  }
})();
