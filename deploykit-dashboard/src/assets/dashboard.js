// deploykit dashboard: live updates without page reloads.
//
// The page listens to /events (server-sent events, one per journal entry). On each, it adds a
// line to the "Live events" list and asks the server for a fresh rendering of the page's
// content (header x-deploykit-fragment), which replaces <main>. It never replaces the content
// while someone is typing a reason into a form.
(function () {
  'use strict';
  var main = document.getElementById('main');
  var ticker = document.getElementById('ticker');
  var live = document.getElementById('live');
  if (!main || !ticker || !live) { return; }
  var timer = null;
  var busy = false;
  var again = false;

  function editing() {
    var a = document.activeElement;
    if (a && main.contains(a) && /^(INPUT|SELECT|TEXTAREA)$/.test(a.tagName)) { return true; }
    var reasons = main.querySelectorAll('input[name=reason]');
    for (var i = 0; i < reasons.length; i++) {
      if (reasons[i].value !== '') { return true; }
    }
    return false;
  }

  function schedule(ms) {
    if (!timer) { timer = setTimeout(refresh, ms); }
  }

  function refresh() {
    timer = null;
    if (editing()) { schedule(1000); return; }
    if (busy) { again = true; return; }
    busy = true;
    fetch(location.pathname, { headers: { 'x-deploykit-fragment': '1' }, credentials: 'same-origin' })
      .then(function (r) {
        if (r.status === 401) { location.reload(); return null; }
        return r.text();
      })
      .then(function (html) {
        if (html !== null && !editing()) {
          main.innerHTML = html;
          document.body.setAttribute('data-refreshed', String(Date.now()));
        }
      })
      .catch(function () { /* offline: the next event or tick tries again */ })
      .then(function () {
        busy = false;
        if (again) { again = false; schedule(100); }
      });
  }

  function say(n) {
    var li = document.createElement('li');
    li.className = n.kind;
    li.textContent = new Date(n.at).toLocaleTimeString() + '  ' + n.service + '/' +
      n.environment + ' ' + n.revision + ': ' + n.message;
    ticker.insertBefore(li, ticker.firstChild);
    while (ticker.children.length > 50) { ticker.removeChild(ticker.lastChild); }
  }

  var events = new EventSource('/events');
  events.onopen = function () { live.textContent = 'live'; live.className = 'live on'; };
  events.onerror = function () { live.textContent = 'reconnecting'; live.className = 'live off'; };
  events.addEventListener('deployment', function (m) {
    try { say(JSON.parse(m.data)); } catch (e) { /* a malformed event changes nothing */ }
    schedule(150);
  });
  events.addEventListener('resync', function () { schedule(150); });
  // Instances become ready and traffic is measured between journal entries: look again now
  // and then.
  setInterval(function () { schedule(0); }, 5000);
})();
