// The demo dashboard: counters from the retained topic demo/counters, a chart of demo/series,
// connection status, and the backend refresh button. Built on the browser client alone.
import { connect } from './ssegate.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const transports = params.get('transports')?.split(',').filter(Boolean);
// On a gateway with --jwt-key, open the page as /?access_token=<jwt> (a token whose
// ssegate.subscribe covers demo/**); a real page would get it from its backend, as a function
// that the client calls again before the token expires.
const token = params.get('access_token') || undefined;

const client = connect({
  topics: ['demo/counters', 'demo/series'],
  ...(transports ? { transports } : {}),
  ...(token ? { token } : {}),
  flags: { realtime: true, low_latency: true, server_push: true },
  // /?shared=0: this tab gets a connection of its own instead of sharing the leading tab's.
  shared: params.get('shared') != '0',
});

// What the page has seen, for people and for the browser tests.
const seen = { ids: [], refreshes: [], points: 0, counters: null };
window.demo = { client, seen };

const status = $('status');
client.onStatus((s) => {
  status.textContent = s.status;
  status.className = `pill ${s.status}`;
  $('transport').textContent = s.transport || '—';
  $('transport-footer').textContent = s.transport || '…';
  if (s.clientId) $('client-id').textContent = `client_id: ${s.clientId}`;
});

client.state('demo/counters', (state) => {
  seen.counters = state;
  for (const name of ['orders', 'customers', 'products']) {
    const out = $(name);
    const text = String(state?.[name] ?? '—');
    if (out.textContent !== text) {
      out.textContent = text;
      out.classList.add('bump');
      setTimeout(() => out.classList.remove('bump'), 300);
    }
  }
});

// The chart: the last 60 points, drawn on a canvas.
const points = [];
const canvas = $('chart');
const ctx = canvas.getContext('2d');
function draw() {
  const w = canvas.width, h = canvas.height, pad = 24;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = '#e3e8ef';
  ctx.lineWidth = 1;
  for (let i = 0; i <= 4; i++) {
    const y = pad + ((h - 2 * pad) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w - pad, y); ctx.stroke();
  }
  if (points.length < 2) return;
  ctx.strokeStyle = '#2f6fed';
  ctx.lineWidth = 2;
  ctx.beginPath();
  // Newest point at the right edge, older ones flowing left.
  const offset = 60 - points.length;
  points.forEach((p, i) => {
    const x = pad + ((w - 2 * pad) * (offset + i)) / 59;
    const y = h - pad - ((h - 2 * pad) * p.value) / 100;
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.stroke();
}
draw();
client.on('point', (data) => {
  points.push(data);
  if (points.length > 60) points.shift();
  seen.points++;
  $('series-last').textContent = `latest ${data.value.toFixed(1)}`;
  draw();
});

client.on('refresh', (data, ev) => {
  seen.refreshes.push(ev.id);
  const note = $('refreshed');
  note.hidden = false;
  note.textContent = `Refreshed by the backend at ${new Date().toLocaleTimeString()} (${data.target === 'one' ? 'this client' : 'all clients'}).`;
});

// The event log, newest first.
const log = $('log');
client.on('*', (ev) => {
  if (ev.id) seen.ids.push(ev.id);
  $('event-count').textContent = `${seen.ids.length} received`;
  const li = document.createElement('li');
  const time = new Date(ev.ts || Date.now()).toLocaleTimeString();
  const data = JSON.stringify(ev.data);
  for (const text of [time, ev.event, ev.topic || '(direct)', data]) {
    const span = document.createElement('span');
    span.textContent = text;
    li.append(span);
  }
  log.prepend(li);
  while (log.children.length > 50) log.lastChild.remove();
});

$('refresh').addEventListener('click', async () => {
  const one = document.querySelector('input[name=target]:checked').value === 'one';
  const body = one ? { client_id: client.clientId } : {};
  await fetch('/demo/refresh', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
});
