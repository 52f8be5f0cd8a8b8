// mailsink's page around textual.js. No inline script: the page's policy allows only files
// from here.
"use strict";
// Why the server ended the tab's UI (a close frame's reason: a paste too big, the UI turned
// off), shown under "The UI has ended." (textual.js itself shows no reason).
if (window.WebSocket) {
  const Native = window.WebSocket;
  window.WebSocket = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("close", (event) => {
        const shown = document.getElementById("ended-reason");
        if (shown && event.reason) shown.textContent = event.reason;
      });
    }
  };
}
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
