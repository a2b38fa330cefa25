// portvakt review console: start the terminal player (asciinema-player,
// vendored under /static/asciinema-player/) on every element with a
// data-cast-url, with speed buttons. Loaded as a file: the console's CSP
// allows no inline script.
(function () {
  "use strict";
  var speeds = [0.5, 1, 2, 4, 8];
  document.querySelectorAll("[data-cast-url]").forEach(function (el) {
    var url = el.getAttribute("data-cast-url");
    var screen = document.createElement("div");
    var controls = document.createElement("p");
    controls.className = "player-speed";
    controls.appendChild(document.createTextNode("Speed: "));
    el.appendChild(screen);
    el.appendChild(controls);
    var player = null;
    function start(speed, at, play) {
      if (player) {
        player.dispose();
      }
      screen.textContent = "";
      player = AsciinemaPlayer.create(url, screen, {
        speed: speed,
        startAt: at,
        autoPlay: play,
        idleTimeLimit: 2,
        fit: "width",
        controls: true
      });
      controls.querySelectorAll("button").forEach(function (b) {
        b.disabled = Number(b.getAttribute("data-speed")) === speed;
      });
    }
    speeds.forEach(function (s) {
      var b = document.createElement("button");
      b.type = "button";
      b.setAttribute("data-speed", String(s));
      b.textContent = s + "×";
      b.addEventListener("click", function () {
        var at = player ? player.getCurrentTime() : 0;
        start(s, at, true);
      });
      controls.appendChild(b);
    });
    start(1, 0, false);
  });
})();
