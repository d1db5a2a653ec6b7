// Keep every element with data-live current: fetch its URL again every few seconds and swap it in.
(function () {
  const every = Number(document.body.dataset.refreshMs || 2000);
  async function refresh() {
    for (const element of document.querySelectorAll("[data-live]")) {
      try {
        const answer = await fetch(element.dataset.live, {headers: {"X-Live": "1"}});
        if (answer.ok) {
          element.innerHTML = await answer.text();
          document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
        }
      } catch (error) {
        document.getElementById("updated").textContent = "offline, retrying";
      }
    }
  }
  setInterval(refresh, every);
})();
