// The playground: send the prompt to one adapter (or two side by side) through the server's own OpenAI routes and
// show the tokens as they stream. Text only ever goes into textContent: nothing a model writes is parsed as HTML.
"use strict";
(function () {
  const form = document.getElementById("playground");
  if (!form) return;
  const token = form.dataset.token;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const mode = form.querySelector('input[name="mode"]:checked').value;
    const prompt = document.getElementById("prompt").value;
    const maxTokens = parseInt(document.getElementById("max-tokens").value, 10) || 32;
    const temperature = parseFloat(document.getElementById("temperature").value) || 0;
    for (const [selectId, outputId] of [["adapter-a", "output-a"], ["adapter-b", "output-b"]]) {
      const model = document.getElementById(selectId).value;
      const output = document.getElementById(outputId);
      output.textContent = "";
      delete output.dataset.error;
      if (!model) {
        output.dataset.done = "true";
        continue;
      }
      output.dataset.done = "false";
      stream(model, mode, prompt, maxTokens, temperature, output);
    }
  });

  async function stream(model, mode, prompt, maxTokens, temperature, output) {
    const body = { model: model, max_tokens: maxTokens, temperature: temperature, stream: true };
    if (mode === "chat") body.messages = [{ role: "user", content: prompt }];
    else body.prompt = prompt;
    const headers = { "Content-Type": "application/json" };
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch(mode === "chat" ? "/v1/chat/completions" : "/v1/completions", {
        method: "POST", headers: headers, body: JSON.stringify(body),
      });
      if (!response.ok) {
        fail(output, "error " + response.status + ": " + errorMessage(await response.text()));
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const event = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          for (const line of event.split("\n")) {
            if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
            const chunk = JSON.parse(line.slice(6));
            if (chunk.error) fail(output, "error: " + chunk.error.message);
            const choice = chunk.choices && chunk.choices[0];
            if (choice) output.textContent += mode === "chat" ? (choice.delta && choice.delta.content) || "" : choice.text || "";
          }
        }
      }
    } catch (error) {
      fail(output, String(error));
    } finally {
      output.dataset.done = "true";
    }
  }

  function fail(output, message) {
    output.textContent += message;
    output.dataset.error = "true";
  }

  function errorMessage(text) {
    try {
      return JSON.parse(text).error.message;
    } catch (_) {
      return text;
    }
  }
})();
