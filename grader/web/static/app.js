// Progressive enhancement only: every page works without this file.
(function () {
  "use strict";

  var TEXTS = {
    queued: "Waiting for a grader; this usually takes a few seconds.",
    running: "Being graded now."
  };

  // A submission page whose status is queued or running asks the server for the status
  // (about once a second while it is fresh) and reloads itself when grading is done, so
  // the result appears without the student reloading. Without JavaScript the page has a
  // refresh link and a <noscript> meta refresh instead.
  function followSubmission() {
    var box = document.getElementById("live-status");
    if (!box) return;
    var url = box.getAttribute("data-status-url");
    var status = box.getAttribute("data-status");
    if (!url || (status !== "queued" && status !== "running")) return;
    var started = Date.now();
    var failures = 0;

    function show(next) {
      var badge = box.querySelector(".badge");
      if (badge) {
        badge.className = "badge status-" + next;
        badge.textContent = next;
      }
      var text = box.querySelector(".live-text");
      if (text && TEXTS[next]) text.textContent = TEXTS[next];
      box.setAttribute("data-status", next);
    }

    function schedule() {
      // Slower after a minute and after five, so a long queue at a deadline is not
      // hammered by open tabs; back off further while the server does not answer.
      var age = Date.now() - started;
      var delay = age < 60000 ? 1000 : age < 300000 ? 3000 : 10000;
      if (failures) delay = Math.min(30000, delay * Math.pow(2, failures));
      window.setTimeout(poll, delay);
    }

    function poll() {
      if (document.hidden) {
        schedule(); // a background tab waits; it catches up when shown
        return;
      }
      fetch(url, { credentials: "same-origin", cache: "no-store", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status >= 400 && response.status < 500 && response.status !== 429) {
            throw new Error("stop"); // logged out or no access: the refresh link still works
          }
          if (!response.ok) throw new Error("retry");
          return response.json();
        })
        .then(function (data) {
          failures = 0;
          if (data.done) {
            window.location.reload();
            return;
          }
          if (data.status && data.status !== box.getAttribute("data-status")) show(data.status);
          schedule();
        })
        .catch(function (error) {
          if (error && error.message === "stop") return;
          failures += 1;
          schedule();
        });
    }

    schedule();
  }

  // Times are printed in UTC; hovering one shows it in the reader's own time zone.
  function localTimes() {
    var times = document.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var when = new Date(times[i].getAttribute("datetime"));
      if (!isNaN(when.getTime()) && !times[i].title) times[i].title = "your time: " + when.toLocaleString();
    }
  }

  function start() {
    followSubmission();
    localTimes();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
