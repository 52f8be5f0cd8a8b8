// node --test, with mailsink serving (MAILSINK_URL and SMTP_PORT say where, if not the defaults)
import assert from "node:assert/strict";
import { test } from "node:test";
import { MailpitClient } from "mailpit-api";
import nodemailer from "nodemailer";

const api = process.env.MAILSINK_URL ?? "http://127.0.0.1:8025";
const mailpit = new MailpitClient(api);
const smtp = nodemailer.createTransport({
  host: "127.0.0.1",
  port: Number(process.env.SMTP_PORT ?? 1025),
});

test("signup mails a confirmation link", async () => {
  await smtp.sendMail({
    from: "app@example.test",
    to: "ann@example.test",
    bcc: "audit@example.test",
    subject: "Confirm your address",
    text: "https://app.example.test/confirm/abc123",
  });

  const message = await mailpit.waitForMessage({ query: "to:ann@example.test subject:Confirm" });
  assert.match(message.Text, /confirm\/abc123/);
  // mailsink's own API has the envelope: whom the server was really asked to deliver to.
  const answer = await fetch(`${api}/api/mailsink/wait?query=rcpt:audit@example.test&timeout=2s`);
  const body = await answer.json(); // an array of messages, or (408, 400, …) {"error": …}
  assert.ok(answer.ok, `waiting for the mail to audit@example.test: ${body.error}`);
  const [sent] = body;
  assert.deepEqual(sent.rcpt_to, ["ann@example.test", "audit@example.test"]);
});

test("a full mailbox reaches the caller as a 452", async () => {
  const rule = { name: "ann is full", stage: "rcpt", reply: "452 4.2.2 Mailbox full",
                 match: { recipient: "ann@*" } };
  const added = await fetch(`${api}/api/mailsink/faults`, {
    method: "POST",
    body: JSON.stringify(rule),
  });
  assert.equal(added.status, 201);
  try {
    await assert.rejects(
      smtp.sendMail({ from: "app@example.test", to: "ann@example.test", subject: "Hi", text: "." }),
      { responseCode: 452 },
    );
  } finally {
    await fetch(`${api}/api/mailsink/faults/${encodeURIComponent(rule.name)}`, { method: "DELETE" });
  }
});
