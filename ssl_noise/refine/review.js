// The expert review page (ssl_noise/refine/review.py): answers kept in the page (and in localStorage, so a reload
// loses nothing), one click or key per image, saved as answers.csv (index,label) that `ssl-noise refine import` reads.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const cards = Array.from(document.querySelectorAll(".card"));
  const answers = new Map();
  let current = 0;
  try {
    const saved = JSON.parse(window.localStorage.getItem(data.storage) || "{}");
    for (const [k, v] of Object.entries(saved)) answers.set(Number(k), v);
  } catch (e) { /* storage disabled (a file:// page in some browsers): answers live in the page only */ }

  function persist() {
    try { window.localStorage.setItem(data.storage, JSON.stringify(Object.fromEntries(answers))); } catch (e) { }
  }

  function render() {
    let done = 0, unsure = 0;
    cards.forEach(function (card, i) {
      const label = answers.get(data.samples[i].index);
      card.classList.toggle("current", i === current);
      card.classList.toggle("answered", label !== undefined && label !== data.unsure);
      card.classList.toggle("unsure", label === data.unsure);
      card.querySelector(".answer").textContent = label === undefined ? "" : "answer: " + label;
      card.querySelectorAll(".keys button").forEach(function (b) {
        b.classList.toggle("chosen", b.dataset.label === label);
      });
      if (label !== undefined) { done += 1; if (label === data.unsure) unsure += 1; }
    });
    document.getElementById("progress").textContent =
      done + " / " + cards.length + " answered (" + unsure + " unsure)";
  }

  function select(i) {
    current = Math.max(0, Math.min(cards.length - 1, i));
    render();
    cards[current].scrollIntoView({block: "nearest"});
  }

  function answer(i, label) {
    answers.set(data.samples[i].index, label);
    persist();
    for (let step = 1; step <= cards.length; step += 1) {  // on to the next unanswered image
      const j = (i + step) % cards.length;
      if (!answers.has(data.samples[j].index)) { select(j); return; }
    }
    select(i);
  }

  function field(text) {
    return /[",\r\n]/.test(text) ? '"' + text.replace(/"/g, '""') + '"' : text;
  }

  function save() {
    const lines = ["index,label"].concat(data.samples.map(function (s) {
      return s.index + "," + field(answers.get(s.index) || "");
    }));
    const blob = new Blob([lines.join("\n") + "\n"], {type: "text/csv"});
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = "answers.csv";
    document.body.appendChild(link);
    link.click();
    link.remove();
  }

  cards.forEach(function (card, i) {
    card.addEventListener("click", function (event) {
      const button = event.target.closest("button[data-label]");
      if (button) answer(i, button.dataset.label); else select(i);
    });
  });
  document.getElementById("save").addEventListener("click", save);
  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key;
    if (/^[1-9]$/.test(key) && Number(key) <= data.classes.length) answer(current, data.classes[Number(key) - 1]);
    else if (key === "0" || key === "u") answer(current, data.unsure);
    else if (key === "ArrowRight" || key === "ArrowDown" || key === "j") select(current + 1);
    else if (key === "ArrowLeft" || key === "ArrowUp" || key === "k") select(current - 1);
    else return;
    event.preventDefault();
  });
  render();
})();
