// What both pages share: messages, form and buttons. The network is left to each page's transport.
export let cursor = 0; // the last answer's cursor: the transport asks for what comes after it
export let epoch = ""; // the server's run that cursor belongs to: the transport sends it back
export const setStatus = (text) => { document.getElementById("status").textContent = text; };
export const showError = (err) => { document.getElementById("error").textContent = err.message ?? err; };

/** Send what the form holds with `transport.send`, and votes with `transport.vote`: both return promises. */
export function start(transport) {
  const form = document.getElementById("send-form");
  form.onsubmit = (event) => {
    event.preventDefault(); // we send it ourselves, and stay on the page
    transport.send({ user: form.user.value, text: form.text.value })
      .then(() => { form.text.value = ""; showError(""); })
      .catch(showError); // what was typed stays, to send again
  };
  document.getElementById("messages").onclick = ({ target }) => { // on a Like or Dislike button
    if (target.name) transport.vote(Number(target.value), target.name).catch(showError);
  };
}

/** Show a `messages` answer, and remember its cursor. User text goes in as text, never run as HTML,
 * and each name in a <bdi>, so that a name in Arabic or Hebrew can't reorder what follows it. */
export function apply(answer) {
  const list = document.getElementById("messages");
  if (answer.reset) list.replaceChildren(); // the server restarted: what we show is from its last run
  for (const message of answer.messages) {
    const item = element("li", "", { id: `message-${message.id}` });
    item.append(element("bdi", message.user), ` ${new Date(message.timestamp).toLocaleTimeString()}`,
                element("p", message.text),
                element("button", `Like ${message.likes}`, { name: "like", value: message.id }), " ",
                element("button", `Dislike ${message.dislikes}`, { name: "dislike", value: message.id }));
    const old = document.getElementById(item.id); // shown already: its counts changed
    old ? old.replaceWith(item) : list.append(item);
  }
  ({ cursor, epoch } = answer); // what the transport sends back next time
  setStatus("connected"); // an answer came
}

const element = (tag, text, more) => Object.assign(document.createElement(tag), { textContent: text }, more);
