// cypress/e2e/signup.cy.js
const api = "http://127.0.0.1:8025/api/mailsink";
const full = { name: "ann is full", stage: "rcpt", reply: "452 4.2.2 Mailbox full",
               match: { recipient: "ann@*" } };

function signUp(address) {
  cy.visit("/signup");
  cy.get("input[name=email]").type(address);
  cy.get("form").submit();
}

afterEach(() => {
  cy.request({ method: "DELETE", url: `${api}/faults/ann%20is%20full`, failOnStatusCode: false });
});

it("mails a confirmation link", () => {
  cy.mailpitDeleteAllEmails();
  signUp("ann@example.test");
  cy.mailpitHasEmailsBySearch("to:ann@example.test subject:Confirm");
  cy.mailpitGetMail().mailpitGetMailTextBody().should("contain", "/confirm/");
});

it("says so when the mailbox is full", () => {
  cy.request("POST", `${api}/faults`, full);
  signUp("ann@example.test");
  cy.contains("We could not send you a confirmation mail");
});
