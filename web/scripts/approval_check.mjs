// Answer a human-in-the-loop approval as a person does, in headless Chromium (chromium.mjs):
//   node approval_check.mjs --airflow http://127.0.0.1:PORT --user U --password PW
//        --page REQUIRED_ACTIONS_URL --option Approve --note "why" --out DIR --result result.json
//        [--name PREFIX] [--answer-wait-ms 30000]
// logs in through the login form (the simple auth manager's, or FAB's: an <input type=submit>),
// opens the task's "Required actions" page (the link the approval sends), records what it shows
// (subject, body), types the note into the form's Note field, clicks the option's button and waits
// until the page says the response was received (the options stay, disabled); screenshots before
// and after (PREFIX_pending.png …); ``answer_status`` is the HTTP status of the answer the page
// sent. A person whose role may not answer: ``answer_status`` 403, ``clicked`` stays unset, ``error``
// says what did not happen and ``alerts`` holds the toasts the UI showed. The result JSON is what
// the calling test asserts on.
import { parseArgs } from "./args.mjs";
import { asPerson } from "./chromium.mjs";

const args = parseArgs(process.argv, ["airflow", "user", "password", "page", "option", "out", "result"]);
const prefix = args.name ?? "approval";
await asPerson(args, { width: 1400, height: 1100 }, prefix, async ({ page, result, shot }) => {
  // the answer the page sends (PATCH …/hitlDetails): its HTTP status says whether the API took it
  page.on("response", (response) => {
    if (response.request().method() === "PATCH" && response.url().includes("/hitlDetails")) {
      result.answer_status = response.status();
    }
  });
  const full = { fullPage: true };
  await page.goto(args.page);
  const button = page.getByRole("button", { name: args.option, exact: true });
  await button.waitFor();
  await page.waitForTimeout(500);
  result.text = (await page.locator("body").innerText()).slice(0, 8000);
  await shot(`${prefix}_pending.png`, page, full);
  if (args.note !== undefined) {
    const note = page.locator("[name=element_note]");
    await note.scrollIntoViewIfNeeded();
    await note.fill(args.note);
  }
  result.enabled = await button.isEnabled();
  await button.click();
  // answered: the page says so and keeps the options, disabled
  await page.getByText("Response received", { exact: false }).first().waitFor({
    timeout: Number(args["answer-wait-ms"] ?? 30000) });
  result.enabled_after = await button.isEnabled();
  result.after = (await page.locator("body").innerText()).slice(0, 4000);
  result.clicked = true;
  await shot(`${prefix}_answered.png`, page, full);
});
