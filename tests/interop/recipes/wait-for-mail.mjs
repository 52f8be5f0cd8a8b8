// Playwright: wait for mail from a test. `request` is an APIRequestContext: the `request`
// fixture of @playwright/test, or `await request.newContext()`. The server answers as soon as
// `count` messages match `query` (mailsink's search language), newest first.
export async function waitForMail(request, query, { count = 1, timeout = "10s" } = {}) {
  const api = process.env.MAILSINK_URL ?? "http://127.0.0.1:8025";
  const answer = await request.get(`${api}/api/mailsink/wait`, {
    params: { query, count, timeout },
    timeout: 0, // the server's `timeout` bounds the wait
  });
  const body = await answer.json();
  if (!answer.ok()) throw new Error(`waiting for mail matching ${query}: ${body.error}`);
  return body;
}
