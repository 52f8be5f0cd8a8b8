// mailsink's page around textual.js. No inline script: the page's policy allows only files
// from here.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // The WebSocket as the browser sees this page (wss:// behind an HTTPS proxy), before
  // textual.js connects on window.onload; the server wrote its own guess into the page.
  const terminal = document.getElementById("terminal");
  if (terminal) {
    const scheme = window.location.protocol === "https:" ? "wss://" : "ws://";
    terminal.dataset.sessionWebsocketUrl = scheme + window.location.host + "/ui/ws";
  }
  // Restart, once the session has ended (textual.js marks the body "-closed").
  for (const button of document.querySelectorAll("button.restart")) {
    button.addEventListener("click", () => window.location.reload());
  }
});
