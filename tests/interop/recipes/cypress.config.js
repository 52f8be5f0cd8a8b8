// cypress.config.js; and in cypress/support/e2e.js: import "cypress-mailpit";
const { defineConfig } = require("cypress");

module.exports = defineConfig({
  // cypress-mailpit 2 (Cypress 15.10 or later) reads the URL here; 1.x from `env`.
  expose: { MAILPIT_URL: "http://127.0.0.1:8025" },
  e2e: { baseUrl: "http://localhost:3000" },
});
