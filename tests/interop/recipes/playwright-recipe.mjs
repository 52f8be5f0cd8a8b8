// Runs wait-for-mail.mjs (the README's Playwright recipe) with playwright-core's own
// APIRequestContext, no browser needed; the mail is sent with nodemailer as an app would.
//
//     MAILSINK_URL=http://127.0.0.1:PORT SMTP_PORT=PORT node recipes/playwright-recipe.mjs
//
// Prints "playwright recipe: all checks passed" or exits 1 with the first mismatch.
import assert from "node:assert/strict";
import nodemailer from "nodemailer";
import { request } from "playwright-core";
import { waitForMail } from "./wait-for-mail.mjs";

const smtp = nodemailer.createTransport({ host: "127.0.0.1", port: Number(process.env.SMTP_PORT) });
const context = await request.newContext();
try {
  const waiting = waitForMail(context, "rcpt:bob@example.test subject:Reset", { count: 2 });
  for (const n of [1, 2]) {
    await smtp.sendMail({
      from: "app@example.test",
      to: "bob@example.test",
      subject: `Reset your password (${n})`,
      text: `https://app.example.test/reset/${n}`,
    });
  }
  const mails = await waiting;
  assert.deepEqual(mails.map((m) => m.subject),
                   ["Reset your password (2)", "Reset your password (1)"]);
  assert.deepEqual(mails[0].rcpt_to, ["bob@example.test"]);

  await assert.rejects(waitForMail(context, "rcpt:nobody@example.test", { timeout: "200ms" }),
                       /waiting for mail matching rcpt:nobody@example.test: timed out after 0.2s/);
  console.log("playwright recipe: all checks passed");
} finally {
  await context.dispose();
}
