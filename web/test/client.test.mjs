// Unit tests of the pure parts of ssegate.js, and its size budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { gzipSync } from 'node:zlib';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { decide, backoffDelay, mergePatch, applyJsonPatch, StateStore, topicMatches } from '../ssegate.js';

const ALL = ['sse', 'ws', 'long-poll', 'poll'];

test('decide: every row of the decision matrix', () => {
  assert.deepEqual(decide({ bidirectional: true }, ALL), ['ws', 'sse', 'long-poll', 'poll']);
  // bidirectional wins over every other flag
  assert.deepEqual(decide({ bidirectional: true, realtime: true, low_latency: true, legacy: true }, ALL), ['ws', 'sse', 'long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true, low_latency: true, server_push: false }, ALL), ['ws', 'sse', 'long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true, low_latency: true }, ALL), ['ws', 'sse', 'long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true, low_latency: true, server_push: true }, ALL), ['sse', 'ws', 'long-poll', 'poll']);
  // real-time and low latency come before legacy in the matrix
  assert.deepEqual(decide({ realtime: true, low_latency: true, legacy: true }, ALL), ['ws', 'sse', 'long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true, low_latency: true, server_push: true, legacy: true }, ALL), ['sse', 'ws', 'long-poll', 'poll']);
  assert.deepEqual(decide({ legacy: true }, ALL), ['long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true, legacy: true }, ALL), ['long-poll', 'poll']);
  assert.deepEqual(decide({}, ALL), ['sse', 'ws', 'long-poll', 'poll']);
  assert.deepEqual(decide({ realtime: true }, ALL), ['sse', 'ws', 'long-poll', 'poll']);
  assert.deepEqual(decide({ server_push: false }, ALL), ['sse', 'ws', 'long-poll', 'poll']);
  assert.deepEqual(decide(), ALL);
});

test('decide: query-style flag values', () => {
  assert.deepEqual(decide({ realtime: '1', low_latency: 'true', server_push: '0' }, ALL)[0], 'ws');
  assert.deepEqual(decide({ realtime: '1', low_latency: 'true', server_push: 'false' }, ALL)[0], 'ws');
  assert.deepEqual(decide({ bidirectional: false, legacy: 0 }, ALL)[0], 'sse');
});

test('decide: filtered to the client transports, order kept', () => {
  assert.deepEqual(decide({ bidirectional: true }, ['poll', 'sse']), ['sse', 'poll']);
  assert.deepEqual(decide({ realtime: true, low_latency: true }, ['long-poll', 'ws']), ['ws', 'long-poll']);
  assert.deepEqual(decide({ legacy: true }, ['sse', 'ws']), []);
  assert.deepEqual(decide({ legacy: true }, ['poll']), ['poll']);
  assert.deepEqual(decide({}, []), []);
});

test('backoffDelay: full jitter within [0, min(max, base*2^attempt))', () => {
  const opts = { base: 500, max: 15000 };
  // rnd() = 1 gives the ceiling, rnd() = 0 gives zero
  assert.equal(backoffDelay(0, opts, () => 1), 500);
  assert.equal(backoffDelay(1, opts, () => 1), 1000);
  assert.equal(backoffDelay(3, opts, () => 1), 4000);
  assert.equal(backoffDelay(4, opts, () => 1), 8000);
  assert.equal(backoffDelay(5, opts, () => 1), 15000); // 16000 capped
  assert.equal(backoffDelay(50, opts, () => 1), 15000);
  assert.equal(backoffDelay(7, opts, () => 0), 0);
  assert.equal(backoffDelay(2, opts, () => 0.25), 500);
  assert.equal(backoffDelay(10, opts, () => 0.5), 7500);
  // defaults: base 500, max 15000
  assert.equal(backoffDelay(0, undefined, () => 1), 500);
  assert.equal(backoffDelay(9, {}, () => 1), 15000);
  for (let a = 0; a < 12; a++)
    for (let i = 0; i < 50; i++) {
      const d = backoffDelay(a, opts);
      assert.ok(d >= 0 && d < Math.min(15000, 500 * 2 ** a), `attempt ${a}: ${d}`);
    }
});

test('mergePatch: the RFC 7386 examples', () => {
  const cases = [
    [{ a: 'b' }, { a: 'c' }, { a: 'c' }],
    [{ a: 'b' }, { b: 'c' }, { a: 'b', b: 'c' }],
    [{ a: 'b' }, { a: null }, {}],
    [{ a: 'b', b: 'c' }, { a: null }, { b: 'c' }],
    [{ a: ['b'] }, { a: 'c' }, { a: 'c' }],
    [{ a: 'c' }, { a: ['b'] }, { a: ['b'] }],
    [{ a: { b: 'c' } }, { a: { b: 'd', c: null } }, { a: { b: 'd' } }],
    [{ a: [{ b: 'c' }] }, { a: [1] }, { a: [1] }],
    [['a', 'b'], ['c', 'd'], ['c', 'd']],
    [{ a: 'b' }, ['c'], ['c']],
    [{ a: 'foo' }, null, null],
    [{ a: 'foo' }, 'bar', 'bar'],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: 'b', c: null }, { a: 'b' }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
  ];
  for (const [target, patch, want] of cases) assert.deepEqual(mergePatch(target, patch), want, JSON.stringify([target, patch]));
});

test('mergePatch: leaves its inputs unchanged', () => {
  const target = { a: { b: 1 }, c: 2 };
  const patch = { a: { b: 2 }, c: null };
  const out = mergePatch(target, patch);
  assert.deepEqual(out, { a: { b: 2 } });
  assert.deepEqual(target, { a: { b: 1 }, c: 2 });
  assert.deepEqual(patch, { a: { b: 2 }, c: null });
  // a "__proto__" key is data, not a prototype
  const p = mergePatch({}, JSON.parse('{"__proto__":{"x":1}}'));
  assert.deepEqual(Object.keys(p), ['__proto__']);
  assert.equal(Object.getPrototypeOf(p), Object.prototype);
});

test('applyJsonPatch: add', () => {
  assert.deepEqual(applyJsonPatch({ foo: 'bar' }, [{ op: 'add', path: '/baz', value: 'qux' }]), { foo: 'bar', baz: 'qux' });
  assert.deepEqual(applyJsonPatch({ foo: ['bar', 'baz'] }, [{ op: 'add', path: '/foo/1', value: 'qux' }]), { foo: ['bar', 'qux', 'baz'] });
  assert.deepEqual(applyJsonPatch({ foo: [1] }, [{ op: 'add', path: '/foo/-', value: 2 }]), { foo: [1, 2] });
  assert.deepEqual(applyJsonPatch({ foo: [1] }, [{ op: 'add', path: '/foo/1', value: 2 }]), { foo: [1, 2] });
  assert.deepEqual(applyJsonPatch({ foo: 'bar' }, [{ op: 'add', path: '/child', value: { grand: 'c' } }]), { foo: 'bar', child: { grand: 'c' } });
  assert.deepEqual(applyJsonPatch({ a: 1 }, [{ op: 'add', path: '', value: [1] }]), [1]);
  assert.deepEqual(applyJsonPatch({}, [{ op: 'add', path: '/a~1b', value: 1 }, { op: 'add', path: '/m~0n', value: 2 }]), { 'a/b': 1, 'm~n': 2 });
  assert.deepEqual(applyJsonPatch({ foo: 1 }, [{ op: 'add', path: '/foo', value: 2 }]), { foo: 2 }); // add replaces a member
  assert.throws(() => applyJsonPatch({ foo: 'bar' }, [{ op: 'add', path: '/baz/bat', value: 'qux' }]));
  assert.throws(() => applyJsonPatch({ foo: [1] }, [{ op: 'add', path: '/foo/3', value: 2 }]));
  assert.throws(() => applyJsonPatch({ foo: [1] }, [{ op: 'add', path: '/foo/01', value: 2 }]));
  assert.throws(() => applyJsonPatch({}, [{ op: 'add', path: 'nope', value: 1 }]));
});

test('applyJsonPatch: remove', () => {
  assert.deepEqual(applyJsonPatch({ baz: 'qux', foo: 'bar' }, [{ op: 'remove', path: '/baz' }]), { foo: 'bar' });
  assert.deepEqual(applyJsonPatch({ foo: ['bar', 'qux', 'baz'] }, [{ op: 'remove', path: '/foo/1' }]), { foo: ['bar', 'baz'] });
  assert.throws(() => applyJsonPatch({ foo: 1 }, [{ op: 'remove', path: '/bar' }]));
  assert.throws(() => applyJsonPatch({ foo: [1] }, [{ op: 'remove', path: '/foo/1' }]));
  assert.throws(() => applyJsonPatch({ foo: [1] }, [{ op: 'remove', path: '/foo/-' }]));
});

test('applyJsonPatch: replace', () => {
  assert.deepEqual(applyJsonPatch({ baz: 'qux', foo: 'bar' }, [{ op: 'replace', path: '/baz', value: 'boo' }]), { baz: 'boo', foo: 'bar' });
  assert.deepEqual(applyJsonPatch({ a: [1, 2, 3] }, [{ op: 'replace', path: '/a/1', value: 9 }]), { a: [1, 9, 3] });
  assert.deepEqual(applyJsonPatch({ a: 1 }, [{ op: 'replace', path: '', value: { b: 2 } }]), { b: 2 });
  assert.throws(() => applyJsonPatch({ a: 1 }, [{ op: 'replace', path: '/b', value: 2 }]));
});

test('applyJsonPatch: move', () => {
  const doc = { foo: { bar: 'baz', waldo: 'fred' }, qux: { corge: 'grault' } };
  assert.deepEqual(applyJsonPatch(doc, [{ op: 'move', from: '/foo/waldo', path: '/qux/thud' }]), {
    foo: { bar: 'baz' },
    qux: { corge: 'grault', thud: 'fred' },
  });
  assert.deepEqual(applyJsonPatch({ foo: ['all', 'grass', 'cows', 'eat'] }, [{ op: 'move', from: '/foo/1', path: '/foo/3' }]), {
    foo: ['all', 'cows', 'eat', 'grass'],
  });
  assert.deepEqual(applyJsonPatch({ a: 1 }, [{ op: 'move', from: '/a', path: '/a' }]), { a: 1 });
  assert.throws(() => applyJsonPatch({ a: { b: 1 } }, [{ op: 'move', from: '/a', path: '/a/b/c' }]));
  assert.throws(() => applyJsonPatch({ a: 1 }, [{ op: 'move', from: '/x', path: '/y' }]));
});

test('applyJsonPatch: copy', () => {
  const out = applyJsonPatch({ a: { b: [1] } }, [{ op: 'copy', from: '/a', path: '/c' }, { op: 'add', path: '/c/b/-', value: 2 }]);
  // the copy is deep: changing it leaves the source alone
  assert.deepEqual(out, { a: { b: [1] }, c: { b: [1, 2] } });
  assert.throws(() => applyJsonPatch({ a: 1 }, [{ op: 'copy', from: '/x', path: '/y' }]));
});

test('applyJsonPatch: test', () => {
  const doc = { baz: 'qux', foo: ['a', 2, 'c'], o: { x: 1, y: [1, { z: null }] } };
  assert.deepEqual(applyJsonPatch(doc, [
    { op: 'test', path: '/baz', value: 'qux' },
    { op: 'test', path: '/foo/1', value: 2 },
    { op: 'test', path: '/o', value: { y: [1, { z: null }], x: 1 } }, // key order does not matter
    { op: 'test', path: '', value: doc },
  ]), doc);
  assert.throws(() => applyJsonPatch(doc, [{ op: 'test', path: '/baz', value: 'bar' }]));
  assert.throws(() => applyJsonPatch(doc, [{ op: 'test', path: '/foo/1', value: '2' }]));
  assert.throws(() => applyJsonPatch(doc, [{ op: 'test', path: '/o', value: { x: 1 } }]));
  assert.throws(() => applyJsonPatch({ a: [1] }, [{ op: 'test', path: '/a', value: { 0: 1 } }]));
  assert.throws(() => applyJsonPatch(doc, [{ op: 'frobnicate', path: '/baz' }]));
});

test('applyJsonPatch: atomic, a failing op leaves the document unchanged', () => {
  const doc = { orders: 2, customers: 5, list: [1, 2] };
  const before = structuredClone(doc);
  assert.throws(() => applyJsonPatch(doc, [
    { op: 'replace', path: '/customers', value: 6 },
    { op: 'add', path: '/list/-', value: 3 },
    { op: 'remove', path: '/orders' },
    { op: 'test', path: '/orders', value: 2 }, // fails: removed above
  ]));
  assert.deepEqual(doc, before);
  // a successful patch returns a new document and leaves the input alone too
  const ops = [{ op: 'add', path: '/list/-', value: { n: 1 } }];
  const out = applyJsonPatch(doc, ops);
  assert.deepEqual(out.list, [1, 2, { n: 1 }]);
  assert.deepEqual(doc, before);
  out.list[2].n = 9;
  assert.deepEqual(ops[0].value, { n: 1 }); // the result does not alias the operations
});

const snapshot = (topic, version, state) => ({ event: 'snapshot', topic, data: { topic, version, state } });
const patch = (topic, version, p) => ({ id: `1-${version}`, event: 'patch', topic, data: { topic, version, patch: p } });

test('StateStore: snapshot, in-order patches, stale ones ignored', () => {
  const changes = [];
  const s = new StateStore(null, (t, state, v) => changes.push([t, v, state]));
  assert.equal(s.apply(snapshot('dash', 3, { orders: 1, customers: 5 })), 'snapshot');
  assert.deepEqual(s.get('dash'), { version: 3, state: { orders: 1, customers: 5 } });
  assert.equal(s.apply(patch('dash', 4, { orders: 2 })), 'patch');
  assert.equal(s.apply({ event: 'patch', data: { topic: 'dash', version: 5, json_patch: [{ op: 'replace', path: '/customers', value: 6 }] } }), 'patch');
  assert.deepEqual(s.get('dash'), { version: 5, state: { orders: 2, customers: 6 } });
  assert.equal(s.apply(patch('dash', 5, { orders: 99 })), 'stale');
  assert.equal(s.apply(patch('dash', 2, { orders: 99 })), 'stale');
  assert.equal(s.apply(snapshot('dash', 5, { orders: 99 })), 'stale'); // not newer
  assert.equal(s.apply(snapshot('dash', 4, { orders: 99 })), 'stale');
  assert.deepEqual(s.get('dash').state, { orders: 2, customers: 6 });
  assert.equal(s.apply(snapshot('dash', 9, { orders: 7 })), 'snapshot');
  assert.deepEqual(s.get('dash'), { version: 9, state: { orders: 7 } });
  assert.equal(s.apply(snapshot('dash', 1, { orders: 0 }), true), 'snapshot'); // forced (after a reset)
  assert.equal(s.get('dash').version, 1);
  assert.equal(s.apply({ event: 'metrics', topic: 'dash', data: {} }), undefined);
  assert.deepEqual(changes.map(([, v]) => v), [3, 4, 5, 9, 1]);
  // topics are independent
  assert.equal(s.apply(snapshot('other', 1, 'x')), 'snapshot');
  assert.equal(s.get('dash').version, 1);
});

test('StateStore: a gap asks for a snapshot', () => {
  const gaps = [];
  const s = new StateStore((t) => gaps.push(t));
  assert.equal(s.apply(patch('dash', 2, { a: 1 })), 'gap'); // no snapshot yet
  s.apply(snapshot('dash', 2, { a: 1 }));
  assert.equal(s.apply(patch('dash', 4, { a: 3 })), 'gap');
  assert.deepEqual(s.get('dash'), { version: 2, state: { a: 1 } });
  // a JSON patch that does not apply to our copy also needs a fresh snapshot
  assert.equal(s.apply({ event: 'patch', data: { topic: 'dash', version: 3, json_patch: [{ op: 'test', path: '/a', value: 2 }] } }), 'gap');
  assert.deepEqual(gaps, ['dash', 'dash', 'dash']);
  // the fetched snapshot fills the gap and patches go on from it
  assert.equal(s.apply(snapshot('dash', 4, { a: 3 })), 'snapshot');
  assert.equal(s.apply(patch('dash', 5, { b: 1 })), 'patch');
  assert.deepEqual(s.get('dash'), { version: 5, state: { a: 3, b: 1 } });
  s.onGap = null; // works without a gap handler too
  assert.equal(s.apply(patch('dash', 7, {})), 'gap');
});

test('topicMatches: the patterns of the contract', () => {
  const cases = [
    ['a/*', 'a/b', true], ['a/*', 'a/b/c', false], ['a/*', 'a', false], ['a/*', 'ab', false], ['a/*', 'a/', false],
    ['a/**', 'a/b', true], ['a/**', 'a/b/c', true], ['a/**', 'a', false], ['a/**', 'ab/c', false],
    ['**', 'x', true], ['**', 'x/y/z', true], ['a/b', 'a/b', true], ['a/b', 'a/b/c', false], ['a', 'b', false],
  ];
  for (const [pattern, topic, expected] of cases) assert.equal(topicMatches(pattern, topic), expected, `${pattern} ${topic}`);
});

test('size: ssegate.js minified and gzipped stays within 6 KB', async () => {
  const entry = fileURLToPath(new URL('../ssegate.js', import.meta.url));
  const out = await esbuild.build({ entryPoints: [entry], bundle: false, minify: true, write: false, format: 'esm' });
  const min = out.outputFiles[0].contents;
  const gz = gzipSync(min, { level: 9 }).length;
  console.log(`ssegate.js: ${min.length} bytes minified, ${gz} bytes gzipped`);
  assert.ok(gz <= 6144, `${gz} bytes gzipped`);
});
