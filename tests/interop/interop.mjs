// The unmodified npm clients of Mailpit (mailpit-api 2.x) and MailHog (mailhog 4.x) against a
// live mailsink: mail goes in over SMTP as an app sends it, the clients read it back.
//
//     node interop.mjs HTTP_URL SMTP_HOST SMTP_PORT
//
// Exits 1 with one clear line on the first mismatch (run by tests/test_http_interop.py).

import net from "node:net";
import { createRequire } from "node:module";
import { MailpitClient } from "mailpit-api";

const require = createRequire(import.meta.url);
const mailhog = require("mailhog");

const [baseURL, smtpHost, smtpPortText] = process.argv.slice(2);
if (!baseURL || !smtpHost || !smtpPortText) {
  console.error("usage: node interop.mjs HTTP_URL SMTP_HOST SMTP_PORT");
  process.exit(2);
}
const smtpPort = Number(smtpPortText);
let step = "start";

class Mismatch extends Error {}

function check(condition, what, got) {
  if (!condition) {
    const shown = got === undefined ? "" : `: got ${JSON.stringify(got)?.slice(0, 300)}`;
    throw new Mismatch(`${what}${shown}`);
  }
}

function equal(got, expected, what) {
  check(
    JSON.stringify(got) === JSON.stringify(expected),
    `${what}: expected ${JSON.stringify(expected)}`,
    got,
  );
}

// ---- SMTP, as an app speaks it (a raw exchange: no mail library between us and the server)

function smtpSend(from, recipients, data) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection(smtpPort, smtpHost);
    const commands = [
      "EHLO interop.test",
      `MAIL FROM:<${from}>`,
      ...recipients.map((r) => `RCPT TO:<${r}>`),
      "DATA",
      null, // the message
      "QUIT",
    ];
    const replies = [];
    let buffer = "";
    let greeted = false;
    socket.setEncoding("utf8");
    socket.setTimeout(5000, () => socket.destroy(new Error("SMTP timeout")));
    socket.on("error", reject);
    socket.on("close", () => resolve(replies));
    socket.on("data", (chunk) => {
      buffer += chunk;
      let end;
      while ((end = buffer.indexOf("\r\n")) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        if (line[3] === "-") continue; // a multi-line reply goes on
        if (!greeted) {
          greeted = true;
        } else {
          replies.push(line);
        }
        if (/^[45]/.test(line) && greeted && replies.length) {
          // a refusal: what the app would see; stop the exchange
          socket.end("QUIT\r\n");
          commands.length = 0;
          return;
        }
        const next = commands.shift();
        if (next === undefined) return;
        if (next === null) {
          const body = data.replace(/\r?\n/g, "\r\n").replace(/^\./gm, "..");
          socket.write(body + (body.endsWith("\r\n") ? "" : "\r\n") + ".\r\n");
        } else {
          socket.write(next + "\r\n");
        }
      }
    });
  });
}

async function send(from, recipients, data) {
  const replies = await smtpSend(from, recipients, data);
  const accepted = replies.find((r) => r.startsWith("250") && /queued|accepted|ok|stored/i.test(r));
  check(replies.some((r) => r.startsWith("354")), `SMTP DATA not accepted`, replies);
  check(accepted !== undefined, "SMTP message not accepted", replies);
  return replies;
}

const PDF = Buffer.from("%PDF-1.4\n% interop invoice\n%%EOF\n");
const ORDER = [
  "From: Shop <noreply@shop.test>",
  "To: Ann <ann@x.test>",
  "Cc: cc@x.test",
  "Subject: Order 1001 confirmed",
  "Date: Fri, 27 Nov 2026 23:10:00 +0000",
  "Message-ID: <order-1001@shop.test>",
  "MIME-Version: 1.0",
  "Content-Type: text/plain; charset=utf-8",
  "",
  "Thanks for order 1001.",
  ".a line that starts with a dot",
  "",
].join("\r\n");
const INVOICE = [
  "From: Billing <billing@shop.test>",
  "To: bob@y.test",
  "Subject: Invoice 1002",
  "Date: Fri, 27 Nov 2026 23:11:00 +0000",
  "Message-ID: <invoice-1002@shop.test>",
  "MIME-Version: 1.0",
  'Content-Type: multipart/mixed; boundary="outer"',
  "",
  "--outer",
  'Content-Type: multipart/alternative; boundary="inner"',
  "",
  "--inner",
  "Content-Type: text/plain; charset=utf-8",
  "",
  "Your invoice 1002 is attached.",
  "--inner",
  "Content-Type: text/html; charset=utf-8",
  "",
  "<p>Your <b>invoice 1002</b> is attached.</p>",
  "--inner--",
  "--outer",
  'Content-Type: application/pdf; name="invoice.pdf"',
  'Content-Disposition: attachment; filename="invoice.pdf"',
  "Content-Transfer-Encoding: base64",
  "",
  PDF.toString("base64"),
  "--outer--",
  "",
].join("\r\n");
const NEWS = [
  "From: News <news@z.test>",
  "To: carol@z.test",
  "Subject: =?UTF-8?B?" + Buffer.from("Grüße aus Köln").toString("base64") + "?=",
  "Date: Fri, 27 Nov 2026 23:12:00 +0000",
  "Message-ID: <news-7@z.test>",
  "MIME-Version: 1.0",
  "Content-Type: text/plain; charset=utf-8",
  "Content-Transfer-Encoding: quoted-printable",
  "",
  "Sch=C3=B6ne Gr=C3=BC=C3=9Fe, newsletter seven.",
  "",
].join("\r\n");

async function sendAll() {
  await send("bounce@shop.test", ["ann@x.test", "cc@x.test", "hidden@x.test"], ORDER);
  await send("billing@shop.test", ["bob@y.test"], INVOICE);
  await send("news@z.test", ["carol@z.test"], NEWS);
}

async function rejects(promise, what) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Mismatch(`${what}: expected the client to throw`);
}

// ---- mailpit-api

async function mailpit() {
  const client = new MailpitClient(baseURL);
  step = "mailpit deleteMessages()";
  await client.deleteMessages();
  step = "mailpit getInfo() when empty";
  equal((await client.getInfo()).Messages, 0, "Messages when empty");

  await sendAll();

  step = "mailpit listMessages()";
  const list = await client.listMessages();
  equal(list.total, 3, "total");
  equal(list.messages_count, 3, "messages_count");
  equal(list.unread, 3, "unread");
  equal(list.start, 0, "start");
  equal(list.count, 3, "count");
  check(Array.isArray(list.tags), "tags is a list", list.tags);
  const subjects = list.messages.map((m) => m.Subject);
  equal(subjects, ["Grüße aus Köln", "Invoice 1002", "Order 1001 confirmed"], "newest first");
  const [news, invoice, order] = list.messages;
  for (const m of list.messages) {
    check(typeof m.ID === "string" && m.ID.length > 0, "ID is a string", m.ID);
    check(m.Read === false, "Read is false", m.Read);
    check(typeof m.Size === "number" && m.Size > 0, "Size", m.Size);
    check(!Number.isNaN(Date.parse(m.Created)), "Created is a date", m.Created);
  }
  equal(order.From, { Name: "Shop", Address: "noreply@shop.test" }, "From");
  equal(order.To, [{ Name: "Ann", Address: "ann@x.test" }], "To");
  equal(order.Cc, [{ Name: "", Address: "cc@x.test" }], "Cc");
  equal(order.MessageID, "order-1001@shop.test", "MessageID");
  // A snippet may still be "" on a server's first listing: mailsink parses snippets within a
  // time budget per request (mailpit_shapes.SNIPPET_BUDGET_S), where Mailpit stores them with
  // each message. Each one, when given, must be right; within three listings all are there.
  const snippets = [
    [news, "Schöne Grüße, newsletter seven."],
    [order, "Thanks for order 1001. .a line that starts with a dot"],
  ];
  for (const [m, text] of snippets) {
    check(typeof m.Snippet === "string", "Snippet is a string", m.Snippet);
    check(!m.Snippet || m.Snippet.startsWith(text), "Snippet", m.Snippet);
  }
  equal(invoice.Attachments, 1, "attachment count in the list");
  equal(order.Attachments, 0, "no attachments");

  step = "mailpit listMessages() again: every Snippet";
  let rows = null;
  for (let listing = 0; listing < 3 && !rows?.every((r) => r.Snippet); listing++) {
    rows = (await client.listMessages()).messages;
  }
  for (const [m, text] of snippets) {
    const row = rows.find((r) => r.ID === m.ID);
    check(row.Snippet.startsWith(text), "Snippet within three listings", row.Snippet);
  }

  step = "mailpit listMessages(1, 1)";
  const page = await client.listMessages(1, 1);
  equal(page.messages.map((m) => m.ID), [invoice.ID], "second page of one");
  equal([page.start, page.count, page.total], [1, 1, 3], "start, count, total");

  step = "mailpit getMessageSummary(order)";
  const full = await client.getMessageSummary(order.ID);
  equal(full.ID, order.ID, "ID");
  equal(full.Subject, "Order 1001 confirmed", "Subject");
  equal(full.ReturnPath, "bounce@shop.test", "ReturnPath is MAIL FROM");
  check(
    full.Bcc.some((a) => a.Address === "hidden@x.test"),
    "Bcc has the envelope-only recipient",
    full.Bcc,
  );
  check(full.Text.includes("Thanks for order 1001."), "Text", full.Text);
  check(full.Text.includes("\n.a line that starts with a dot"), "dot-stuffing undone", full.Text);
  equal(full.Attachments, [], "Attachments list");
  equal(full.Inline, [], "Inline list");
  check(!Number.isNaN(Date.parse(full.Date)), "Date", full.Date);

  step = "mailpit read state after getMessageSummary";
  const info = await client.getInfo();
  equal(info.Messages, 3, "info Messages");
  equal(info.Unread, 2, "getMessageSummary marks read");
  check(typeof info.Version === "string", "info Version", info.Version);

  step = "mailpit getMessageSummary() (latest)";
  const latest = await client.getMessageSummary();
  equal(latest.ID, news.ID, "latest is the newest");
  check(latest.Text.includes("Schöne Grüße"), "quoted-printable decoded", latest.Text);

  step = "mailpit attachments";
  const bill = await client.getMessageSummary(invoice.ID);
  equal(bill.Attachments.length, 1, "one attachment");
  const part = bill.Attachments[0];
  equal(part.FileName, "invoice.pdf", "FileName");
  equal(part.ContentType, "application/pdf", "ContentType");
  check(typeof part.PartID === "string" && part.PartID, "PartID", part.PartID);
  check(bill.HTML.includes("<b>invoice 1002</b>"), "HTML", bill.HTML);
  const blob = await client.getMessageAttachment(invoice.ID, part.PartID);
  equal(Buffer.from(await blob.arrayBuffer()).toString("hex"), PDF.toString("hex"), "part bytes");
  check(blob.type.startsWith("application/pdf"), "part type", blob.type);

  step = "mailpit getMessageHeaders";
  const headers = await client.getMessageHeaders(order.ID);
  equal(headers.Subject, ["Order 1001 confirmed"], "Subject header");
  equal(headers["Message-Id"], ["<order-1001@shop.test>"], "Go-canonical Message-Id");
  equal(headers.Cc, ["cc@x.test"], "Cc header");

  step = "mailpit getMessageSource";
  const source = await client.getMessageSource(order.ID);
  check(source.includes("Subject: Order 1001 confirmed\r\n"), "raw source", source.slice(0, 300));
  check(source.includes("\r\n.a line that starts with a dot"), "raw dot line", source);

  step = "mailpit renderMessageHTML / renderMessageText";
  check((await client.renderMessageHTML(invoice.ID)).includes("<b>invoice 1002</b>"), "view html");
  check((await client.renderMessageText(order.ID)).includes("order 1001"), "view txt");

  step = "mailpit searchMessages";
  const found = await client.searchMessages({ query: "subject:Invoice" });
  equal(found.messages.map((m) => m.ID), [invoice.ID], "subject: search");
  equal(found.messages_count, 1, "messages_count of a search");
  const fromNews = await client.searchMessages({ query: "from:news@z.test" });
  equal(fromNews.messages.map((m) => m.ID), [news.ID], "from: search");
  equal((await client.searchMessages({ query: "nothing-matches-this" })).messages, [], "none");

  step = "mailpit setReadStatus";
  equal((await client.getInfo()).Unread, 0, "each one read by getMessageSummary");
  await client.setReadStatus({ Read: false });
  equal((await client.getInfo()).Unread, 3, "all unread");
  await client.setReadStatus({ IDs: [invoice.ID], Read: true });
  equal((await client.getInfo()).Unread, 2, "IDs read");
  await client.setReadStatus({ Search: "subject:Order", Read: true });
  const afterSearch = await client.listMessages();
  equal(afterSearch.messages.map((m) => m.Read), [false, true, true], "Search read");

  step = "mailpit tags";
  await client.setTags({ IDs: [order.ID, invoice.ID], Tags: ["alpha", "beta"] });
  equal((await client.getTags()).sort(), ["alpha", "beta"], "getTags");
  await client.renameTag("alpha", "gamma");
  await client.deleteTag("beta");
  equal(await client.getTags(), ["gamma"], "tags after rename and delete");
  equal((await client.getMessageSummary(order.ID)).Tags, ["gamma"], "message Tags");
  const tagged = await client.searchMessages({ query: "tag:gamma" });
  equal(tagged.messages.map((m) => m.ID).sort(), [invoice.ID, order.ID].sort(), "tag: search");
  await client.setTags({ IDs: [order.ID] });
  equal((await client.getMessageSummary(order.ID)).Tags, [], "tags removed");

  step = "mailpit sendMessage";
  const sent = await client.sendMessage({
    From: { Email: "api@app.test", Name: "The App" },
    To: [{ Email: "dora@x.test", Name: "Dora" }],
    Bcc: ["secret@x.test"],
    Subject: "Sent over HTTP",
    Text: "Hello from the API",
    HTML: "<p>Hello from the <i>API</i></p>",
    Tags: ["api"],
    Attachments: [{ Content: PDF.toString("base64"), Filename: "sent.pdf" }],
  });
  check(typeof sent.ID === "string" && sent.ID, "send ID", sent);
  const waited = await client.waitForMessage({ query: 'subject:"Sent over HTTP"' }, { timeout: 5000 });
  equal(waited.ID, sent.ID, "waitForMessage finds the sent message");
  equal(waited.From, { Name: "The App", Address: "api@app.test" }, "sent From");
  equal(waited.To, [{ Name: "Dora", Address: "dora@x.test" }], "sent To");
  check(waited.Bcc.some((a) => a.Address === "secret@x.test"), "sent Bcc", waited.Bcc);
  check(waited.Tags.includes("api"), "sent Tags", waited.Tags);
  equal(waited.Attachments.map((a) => a.FileName), ["sent.pdf"], "sent attachment");
  check(waited.HTML.includes("<i>API</i>"), "sent HTML", waited.HTML);
  const counted = await client.waitForMessages({ count: 4 }, { timeout: 5000 });
  equal(counted.messages_count, 4, "waitForMessages");

  step = "mailpit getConfiguration";
  check(typeof (await client.getConfiguration()) === "object", "webui configuration");

  step = "mailpit chaos";
  const triggers = await client.getChaosTriggers();
  for (const name of ["Sender", "Recipient", "Authentication"]) {
    check(typeof triggers[name]?.ErrorCode === "number", `chaos ${name}.ErrorCode`, triggers);
    check(typeof triggers[name]?.Probability === "number", `chaos ${name}.Probability`, triggers);
  }
  const set = await client.setChaosTriggers({ Recipient: { ErrorCode: 451, Probability: 100 } });
  equal(set.Recipient, { ErrorCode: 451, Probability: 100 }, "chaos set");
  equal(set.Sender.Probability, 0, "an omitted trigger resets");
  const refused = await smtpSend("a@x.test", ["b@x.test"], ORDER);
  check(refused.some((r) => r.startsWith("451")), "chaos Recipient 451 over SMTP", refused);
  equal((await client.setChaosTriggers()).Recipient.Probability, 0, "chaos reset");

  step = "mailpit deleteMessagesBySearch";
  await client.deleteMessagesBySearch({ query: "subject:Invoice" });
  equal((await client.listMessages()).total, 3, "deleted by search");

  step = "mailpit deleteMessages(IDs)";
  await client.deleteMessages({ IDs: [order.ID] });
  const gone = await rejects(client.getMessageSummary(order.ID), "a deleted message");
  check(/ 404 /.test(gone.message), "a deleted message is a 404", gone.message);
  equal((await client.listMessages()).total, 2, "deleted by ID");

  step = "mailpit deleteMessages() (all)";
  await client.deleteMessages();
  equal((await client.listMessages()).total, 0, "all deleted");
}

// ---- mailhog

async function mailhogClient() {
  const url = new URL(baseURL);
  const api = mailhog({ host: url.hostname, port: Number(url.port) });

  step = "mailhog deleteAll()";
  const cleared = await api.deleteAll();
  equal(cleared.statusCode, 200, "deleteAll status");

  await sendAll();

  step = "mailhog messages()";
  const result = await api.messages();
  equal([result.total, result.count, result.start], [3, 3, 0], "total, count, start");
  const [news, invoice, order] = result.items;
  equal(news.subject, "Grüße aus Köln", "encoded-word subject decoded");
  equal(invoice.subject, "Invoice 1002", "subject");
  equal(order.from, "Shop <noreply@shop.test>", "from");
  equal(order.to, "Ann <ann@x.test>", "to");
  equal(order.cc, "cc@x.test", "cc");
  check(order.text.includes("Thanks for order 1001."), "text", order.text);
  check(news.text.includes("Schöne Grüße"), "quoted-printable text decoded", news.text);
  // MailHog nests a multipart inside a multipart (MIME.Parts[0].MIME), where the client's
  // text/html getters do not look: the nested parts are checked as MailHog shapes them.
  const alternative = invoice.MIME.Parts[0];
  check(/^multipart\/alternative/.test(alternative.Headers["Content-Type"][0]), "nested type");
  const [plain, html] = alternative.MIME.Parts;
  check(plain.Body.includes("Your invoice 1002 is attached."), "nested text part", plain);
  check(html.Body.includes("<b>invoice 1002</b>"), "nested html part", html);
  equal(invoice.attachments.map((a) => a.name), ["invoice.pdf"], "attachments");
  equal(
    Buffer.from(invoice.attachments[0].Body.replace(/\s+/g, ""), "base64").toString("hex"),
    PDF.toString("hex"),
    "attachment body",
  );
  equal(invoice.attachments[0].type, "application/pdf; name=\"invoice.pdf\"", "attachment type");
  equal(invoice.attachments[0].encoding, "base64", "attachment encoding");
  equal(order.date.toISOString(), "2026-11-27T23:10:00.000Z", "date");
  check(!Number.isNaN(order.deliveryDate.getTime()), "deliveryDate from Created", order.Created);
  equal(order.Raw.From, "bounce@shop.test", "Raw.From is MAIL FROM");
  equal(order.Raw.To, ["ann@x.test", "cc@x.test", "hidden@x.test"], "Raw.To is RCPT TO");
  equal(order.Raw.Helo, "interop.test", "Raw.Helo");
  equal(
    [order.From.Mailbox, order.From.Domain, order.From.Params],
    ["bounce", "shop.test", ""],
    "From path",
  );
  equal(order.To.map((p) => `${p.Mailbox}@${p.Domain}`), order.Raw.To, "To paths");
  equal(order.Content.Headers.Subject, ["Order 1001 confirmed"], "Content.Headers");
  check(typeof order.ID === "string" && order.ID, "ID", order.ID);

  step = "mailhog messages(1, 1)";
  const page = await api.messages(1, 1);
  equal([page.start, page.count, page.total], [1, 1, 3], "a page");
  equal(page.items[0].ID, invoice.ID, "the second newest");

  step = "mailhog search";
  equal((await api.search("order 1001")).items.map((m) => m.ID), [order.ID], "containing");
  equal((await api.search("news@z.test", "from")).items.map((m) => m.ID), [news.ID], "from");
  equal((await api.search("bob@y.test", "to")).items.map((m) => m.ID), [invoice.ID], "to");
  equal((await api.latestFrom("billing@shop.test")).subject, "Invoice 1002", "latestFrom");
  equal((await api.latestTo("carol@z.test")).ID, news.ID, "latestTo");
  equal((await api.latestContaining("invoice 1002")).ID, invoice.ID, "latestContaining");
  equal(await api.latestFrom("nobody@none.test"), 0, "latestFrom with no match");

  step = "mailhog encode / decode";
  const qp = api.encode("Grüße", "quoted-printable");
  equal(api.decode(qp, "quoted-printable"), "Grüße", "quoted-printable round trip");
  equal(api.decode(api.encode("Köln", "base64"), "base64"), "Köln", "base64 round trip");

  step = "mailhog deleteMessage";
  const deleted = await api.deleteMessage(order.ID);
  equal(deleted.statusCode, 200, "deleteMessage status");
  const rest = await api.messages();
  equal(rest.items.map((m) => m.ID), [news.ID, invoice.ID], "after deleteMessage");

  step = "mailhog deleteAll";
  await api.deleteAll();
  equal((await api.messages()).total, 0, "after deleteAll");
}

try {
  await mailpit();
  await mailhogClient();
  console.log("interop: mailpit-api and mailhog clients: all checks passed");
} catch (error) {
  const kind = error instanceof Mismatch ? "mismatch" : "error";
  console.error(`interop ${kind} at ${step}: ${error.message}`);
  process.exit(1);
}
