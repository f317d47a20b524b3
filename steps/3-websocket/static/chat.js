// What both pages share: showing messages, and the form. Nothing here knows about the network:
// each page's own script is its transport, which calls startChat() with the functions that send,
// and hands what the server answers to apply().
export function startChat(transport) {
  const form = document.getElementById("send-form");
  const showError = (text) => { document.getElementById("error").textContent = text; };
  form.onsubmit = (event) => {
    event.preventDefault(); // we send it ourselves, and stay on the page
    transport.send({ user: form.user.value, text: form.text.value })
      .then(() => { form.text.value = ""; showError(""); })
      .catch((error) => showError(error.message)); // what was typed stays, to send again
  };
  let cursor = 0;
  return {
    get cursor() { return cursor; },
    /** Show a `messages` answer, and remember its cursor, to ask for what comes after it. */
    apply(answer) {
      for (const message of answer.messages) {
        document.getElementById("messages").append(renderMessage(message));
      }
      cursor = answer.cursor;
    },
    setStatus: (state) => { document.getElementById("status").textContent = state; },
    showError,
  };
}

/** Build a message's <li>. User text goes in as textContent: shown as text, never run as HTML. */
function renderMessage(message) {
  const item = element("li");
  // <bdi>: a name in Arabic or Hebrew can't reorder what follows it.
  item.append(element("bdi", message.user), ` ${new Date(message.timestamp).toLocaleTimeString()}`,
              element("p", message.text));
  return item;
}

function element(tag, text = "") {
  const node = document.createElement(tag);
  node.textContent = text;
  return node;
}
