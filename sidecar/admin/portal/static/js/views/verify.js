// Verify a signature: check a delivery's headers against a secret, here in the page, and
// receiver snippets using the Standard Webhooks libraries.

import { append, field, h, pre, title } from "../dom.js";
import { verify } from "../verify.js";

const SNIPPETS = [
  [
    "Python",
    "pip install standardwebhooks",
    `from standardwebhooks.webhooks import Webhook, WebhookVerificationError

wh = Webhook(os.environ["WEBHOOK_SECRET"])  # whsec_...

def receive(body: bytes, headers: dict[str, str]):
    try:
        event = wh.verify(body, headers)  # the raw body, as received
    except WebhookVerificationError:
        return 400
    # deduplicate on headers["webhook-id"], then handle event["type"], event["data"]
    return 204`,
  ],
  [
    "JavaScript",
    "npm install standardwebhooks",
    `import { Webhook } from "standardwebhooks";

const wh = new Webhook(process.env.WEBHOOK_SECRET); // whsec_...

app.post("/webhooks", express.raw({ type: "application/json" }), (req, res) => {
  let event;
  try {
    event = wh.verify(req.body.toString("utf8"), req.headers);
  } catch (err) {
    return res.sendStatus(400);
  }
  // deduplicate on req.headers["webhook-id"], then handle event.type, event.data
  res.sendStatus(204);
});`,
  ],
  [
    "Go",
    "go get github.com/standard-webhooks/standard-webhooks/libraries",
    `import (
    "io"
    "net/http"
    "os"
    "strings"

    standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

wh, err := standardwebhooks.NewWebhook(strings.TrimPrefix(os.Getenv("WEBHOOK_SECRET"), "whsec_"))

func receive(w http.ResponseWriter, r *http.Request) {
    body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
    if err := wh.Verify(body, r.Header); err != nil {
        w.WriteHeader(http.StatusBadRequest)
        return
    }
    // deduplicate on r.Header.Get("webhook-id"), then decode body
    w.WriteHeader(http.StatusNoContent)
}`,
  ],
];

export async function renderVerify(root) {
  root.replaceChildren();
  const payload = h("textarea", { rows: "8", spellcheck: "false", class: "code" });
  const id = h("input", { type: "text", spellcheck: "false", autocomplete: "off" });
  const timestamp = h("input", { type: "text", inputmode: "numeric", autocomplete: "off" });
  const signature = h("input", { type: "text", spellcheck: "false", autocomplete: "off" });
  const secret = h("input", { type: "password", spellcheck: "false", autocomplete: "off" });
  const result = h("div", { class: "verdict", role: "status" });
  const form = h(
    "form",
    { class: "card", novalidate: true },
    field("Payload", payload, "The raw request body, exactly as received.").row,
    field("webhook-id", id).row,
    field("webhook-timestamp", timestamp).row,
    field("webhook-signature", signature, "One or more v1,<base64> signatures separated by spaces.")
      .row,
    field("Secret", secret, "whsec_… Checked here in your browser: it is never sent anywhere.").row,
    h("div", { class: "actions" }, h("button", { type: "submit", class: "primary" }, "Verify")),
    result,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    result.replaceChildren();
    const verdict = await verify({
      payload: payload.value,
      id: id.value,
      timestamp: timestamp.value,
      signature: signature.value,
      secret: secret.value,
    });
    result.className = `verdict ${verdict.valid ? "valid" : "invalid"}`;
    append(
      result,
      h("p", {}, h("strong", {}, verdict.valid ? "Valid signature" : "Invalid signature")),
      verdict.valid
        ? h("p", {}, "This delivery was signed with this secret, within the last 5 minutes.")
        : h("p", {}, verdict.detail),
    );
  });
  append(
    root,
    title("Verify a signature"),
    h(
      "p",
      {},
      "Paste a delivery your receiver got to see whether its signature is valid and, if not, why.",
    ),
    form,
    h("h2", {}, "Receiver snippets"),
    h(
      "p",
      {},
      "Verify every delivery with a Standard Webhooks library before trusting it; deduplicate on webhook-id (delivery is at least once).",
    ),
    SNIPPETS.map(([language, install, code]) =>
      h(
        "section",
        { class: "snippet", "aria-label": `${language} snippet` },
        h("h3", {}, language),
        pre(install, `Install the ${language} library`),
        pre(code, `${language} receiver`),
      ),
    ),
  );
}
