// Self-test of the test identity provider: starts server.mjs as a child
// process (several configurations) and runs the device flow end to end
// against it. Prints PASS/FAIL per case; exits non-zero on any failure.
//
//   node tests/idp/selftest.mjs

import { spawn } from 'node:child_process';
import * as crypto from 'node:crypto';
import * as net from 'node:net';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

import { CookieJar } from './approve.mjs';

const SERVER = fileURLToPath(new URL('./server.mjs', import.meta.url));
const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const VERBOSE = process.env.SELFTEST_VERBOSE === '1';

let failures = 0;
const children = new Set();

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startIdp(env = {}) {
  const port = env.IDP_PORT ?? await freePort();
  const child = spawn(process.execPath, [SERVER], {
    env: { ...process.env, ...env, IDP_PORT: String(port) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  const stderr = [];
  child.stderr.on('data', (d) => {
    stderr.push(d.toString());
    if (VERBOSE) process.stderr.write(d);
  });
  const exited = new Promise((resolve) => child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal }); }));
  const stdoutLines = [];
  const ready = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no READY line within 15 s; stderr:\n${stderr.join('')}`)), 15_000);
    createInterface({ input: child.stdout }).on('line', (line) => {
      stdoutLines.push(line);
      const m = line.match(/^IDP READY (http:\/\/127\.0\.0\.1:\d+)$/);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
    exited.then(({ code }) => { clearTimeout(timer); reject(new Error(`server exited (${code}) before READY; stderr:\n${stderr.join('')}`)); });
  });
  return {
    issuer: ready, port, child, exited, stdoutLines, stderr,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timeout = new Promise((r) => { setTimeout(() => r({ code: 'timeout' }), 5000).unref(); });
      const res = await Promise.race([exited, timeout]);
      if (res.code === 'timeout') child.kill('SIGKILL');
      return res;
    },
  };
}

function assert(cond, msg) {
  if (!cond) throw new Error(msg);
}

async function check(name, fn) {
  try {
    await fn();
    console.log(`PASS ${name}`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${name}: ${e.message}`);
  }
}

const b64json = (part) => JSON.parse(Buffer.from(part, 'base64url').toString('utf8'));

function basic(id, secret) {
  return `Basic ${Buffer.from(`${encodeURIComponent(id)}:${encodeURIComponent(secret)}`).toString('base64')}`;
}

async function postForm(url, form, auth) {
  const headers = { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' };
  if (auth) headers.authorization = auth;
  const res = await fetch(url, { method: 'POST', headers, body: new URLSearchParams(form).toString() });
  return { status: res.status, body: await res.json() };
}

async function discover(issuer) {
  const res = await fetch(`${issuer}/.well-known/openid-configuration`);
  assert(res.status === 200, `discovery HTTP ${res.status}`);
  return res.json();
}

async function deviceAuth(meta, { clientId = 'portvakt', secret = 'portvakt-secret', scope = 'openid profile email groups' } = {}) {
  const form = { scope };
  if (secret === null) form.client_id = clientId;
  return postForm(meta.device_authorization_endpoint, form, secret === null ? undefined : basic(clientId, secret));
}

async function tokenOnce(meta, deviceCode, { clientId = 'portvakt', secret = 'portvakt-secret' } = {}) {
  const form = { grant_type: DEVICE_GRANT, device_code: deviceCode };
  if (secret === null) form.client_id = clientId;
  return postForm(meta.token_endpoint, form, secret === null ? undefined : basic(clientId, secret));
}

// Polls until the answer is not authorization_pending (or 20 s pass).
async function poll(meta, device, opts) {
  const deadline = Date.now() + 20_000;
  for (;;) {
    const r = await tokenOnce(meta, device.device_code, opts);
    if (r.body.error !== 'authorization_pending' || Date.now() > deadline) return r;
    await new Promise((res) => { setTimeout(res, (device.interval ?? 5) * 1000); });
  }
}

async function approve(issuer, body) {
  const res = await fetch(`${issuer}/test/approve`, {
    method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  return { status: res.status, body: await res.json() };
}

// Checks the ID token's signature against the JWKS and returns its payload.
async function verifyIdToken(meta, idToken, alg) {
  const [h, p, s] = idToken.split('.');
  const header = b64json(h);
  assert(header.alg === alg, `header alg ${header.alg}, want ${alg}`);
  const jwks = await (await fetch(meta.jwks_uri)).json();
  const jwk = jwks.keys.find((k) => k.kid === header.kid);
  assert(jwk, `kid ${header.kid} not in JWKS`);
  const key = crypto.createPublicKey({ key: jwk, format: 'jwk' });
  const ok = crypto.verify('sha256', Buffer.from(`${h}.${p}`), alg === 'ES256' ? { key, dsaEncoding: 'ieee-p1363' } : key, Buffer.from(s, 'base64url'));
  assert(ok, 'signature does not verify against the JWKS');
  return b64json(p);
}

const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

async function loginCase(idp, meta, alg, user, password, want) {
  const d = await deviceAuth(meta);
  assert(d.status === 200, `device authorization HTTP ${d.status} ${JSON.stringify(d.body)}`);
  const pending = await tokenOnce(meta, d.body.device_code);
  assert(pending.body.error === 'authorization_pending', `before approval: ${JSON.stringify(pending.body)}`);
  const a = await approve(idp.issuer, { user_code: d.body.user_code, username: user, password, decision: 'approve' });
  assert(a.status === 200 && a.body.ok === true, `approve: ${a.status} ${JSON.stringify(a.body)}`);
  const t = await poll(meta, d.body);
  assert(t.status === 200 && t.body.id_token, `token: ${t.status} ${JSON.stringify(t.body)}`);
  const claims = await verifyIdToken(meta, t.body.id_token, alg);
  assert(claims.iss === idp.issuer, `iss ${claims.iss}`);
  assert(claims.aud === 'portvakt' || same(claims.aud, ['portvakt']), `aud ${JSON.stringify(claims.aud)}`);
  assert(claims.sub === user, `sub ${claims.sub}`);
  for (const [k, v] of Object.entries(want)) {
    assert(same(claims[k], v), `${k} = ${JSON.stringify(claims[k])}, want ${JSON.stringify(v)}`);
  }
  assert(claims.exp > claims.iat && typeof claims.auth_time === 'number', 'exp/iat/auth_time');
  return { device: d.body, claims };
}

// A browser at the authorization endpoint: follows redirects with a cookie
// jar, fills the login form with `user`/`password`, allows consent, and
// returns the query of the redirect back to `redirect`.
async function browserLogin(meta, params, redirect, user, password) {
  const jar = new CookieJar();
  let url = new URL(`${meta.authorization_endpoint}?${new URLSearchParams(params)}`);
  let form;
  for (let hop = 0; hop < 20; hop += 1) {
    const headers = { accept: 'text/html' };
    const cookie = jar.header(url);
    if (cookie) headers.cookie = cookie;
    if (form) headers['content-type'] = 'application/x-www-form-urlencoded';
    const res = await fetch(url, {
      method: form ? 'POST' : 'GET', headers, body: form ? new URLSearchParams(form).toString() : undefined, redirect: 'manual',
    });
    jar.store(res, url);
    form = undefined;
    const location = res.headers.get('location');
    if (location) {
      const next = new URL(location, url);
      if (next.href.startsWith(redirect)) return next.searchParams;
      url = next;
      continue;
    }
    const html = await res.text();
    const login = html.match(/<form id="login" method="post" action="([^"]*)"/);
    const consent = html.match(/<form id="consent" method="post" action="([^"]*)"/);
    if (login) {
      url = new URL(login[1], url);
      form = { login: user, password };
    } else if (consent) {
      url = new URL(consent[1], url);
      form = {};
    } else {
      throw new Error(`unexpected page (HTTP ${res.status}): ${html.slice(0, 300)}`);
    }
  }
  throw new Error('too many steps');
}

async function main() {
  // ------------------------------------------------------------ RS256, defaults
  const idp = await startIdp({});
  let meta;
  await check('RS256: READY line is the only stdout line, issuer matches port', async () => {
    assert(idp.issuer === `http://127.0.0.1:${idp.port}`, idp.issuer);
    assert(same(idp.stdoutLines, [`IDP READY ${idp.issuer}`]), JSON.stringify(idp.stdoutLines));
  });
  await check('RS256: health and discovery (device_authorization_endpoint)', async () => {
    const h = await fetch(`${idp.issuer}/test/health`);
    assert(h.status === 200, `health ${h.status}`);
    meta = await discover(idp.issuer);
    assert(meta.issuer === idp.issuer, `issuer ${meta.issuer}`);
    assert(meta.device_authorization_endpoint === `${idp.issuer}/device/auth`, `device endpoint ${meta.device_authorization_endpoint}`);
    assert(meta.grant_types_supported.includes(DEVICE_GRANT), 'device grant not supported');
    assert(meta.id_token_signing_alg_values_supported.includes('RS256'), 'RS256 not advertised');
  });
  let alice;
  await check('RS256: alice approved -> ID token with iss/aud/preferred_username/email/groups/amr', async () => {
    alice = await loginCase(idp, meta, 'RS256', 'alice', 'alice-pw', {
      preferred_username: 'alice', email: 'alice@example.com', groups: ['sre', 'dba'], amr: ['pwd'],
    });
    assert(alice.device.interval === 1, `interval ${alice.device.interval}`);
    assert(alice.device.expires_in === 600, `expires_in ${alice.device.expires_in}`);
    assert(alice.device.verification_uri_complete.startsWith(`${idp.issuer}/device?user_code=`), 'verification_uri_complete');
  });
  await check('RS256: replayed device code -> invalid_grant', async () => {
    const r = await tokenOnce(meta, alice.device.device_code);
    assert(r.status === 400 && r.body.error === 'invalid_grant', JSON.stringify(r.body));
  });
  await check('RS256: carol gets preferred_username carol-idp', async () => {
    await loginCase(idp, meta, 'RS256', 'carol', 'carol-pw', { preferred_username: 'carol-idp', groups: ['sre'], amr: ['pwd'] });
  });
  await check('RS256: mfa-dave gets amr [pwd, otp]', async () => {
    await loginCase(idp, meta, 'RS256', 'mfa-dave', 'dave-pw', { preferred_username: 'dave', groups: ['sre'], amr: ['pwd', 'otp'] });
  });
  await check('RS256: bob has no email claim', async () => {
    const { claims } = await loginCase(idp, meta, 'RS256', 'bob', 'bob-pw', { preferred_username: 'bob', groups: ['dev'] });
    assert(!('email' in claims), 'bob has an email');
  });
  await check('denied code -> access_denied', async () => {
    const d = await deviceAuth(meta);
    const a = await approve(idp.issuer, { user_code: d.body.user_code, decision: 'deny' });
    assert(a.status === 200 && a.body.ok, `deny: ${a.status} ${JSON.stringify(a.body)}`);
    const t = await poll(meta, d.body);
    assert(t.status === 400 && t.body.error === 'access_denied', JSON.stringify(t.body));
  });
  await check('wrong password -> /test/approve 401, code stays pending (re-approve 409)', async () => {
    const d = await deviceAuth(meta);
    const a = await approve(idp.issuer, { user_code: d.body.user_code, username: 'alice', password: 'nope', decision: 'approve' });
    assert(a.status === 401 && a.body.ok === false && /login/.test(a.body.error), `${a.status} ${JSON.stringify(a.body)}`);
    const t = await tokenOnce(meta, d.body.device_code);
    assert(t.body.error === 'authorization_pending', JSON.stringify(t.body));
    // The failed attempt left the code in flight: the provider treats it as used.
    const again = await approve(idp.issuer, { user_code: d.body.user_code, username: 'alice', password: 'alice-pw' });
    assert(again.status === 409 && /AlreadyUsedError/.test(again.body.error), `${again.status} ${JSON.stringify(again.body)}`);
  });
  await check('unknown user code -> /test/approve 404', async () => {
    const a = await approve(idp.issuer, { user_code: 'BCDF-GHJK', username: 'alice', password: 'alice-pw' });
    assert(a.status === 404 && a.body.ok === false && /NotFoundError/.test(a.body.error), `${a.status} ${JSON.stringify(a.body)}`);
  });
  await check('bad /test/approve body -> 400', async () => {
    const res = await fetch(`${idp.issuer}/test/approve`, { method: 'POST', body: 'not json' });
    const body = await res.json();
    assert(res.status === 400 && body.ok === false && body.error, `${res.status} ${JSON.stringify(body)}`);
  });
  await check('wrong client secret -> invalid_client (device and token endpoints)', async () => {
    const d = await deviceAuth(meta, { secret: 'wrong' });
    assert(d.status === 401 && d.body.error === 'invalid_client', `device: ${d.status} ${JSON.stringify(d.body)}`);
    const ok = await deviceAuth(meta);
    const t = await tokenOnce(meta, ok.body.device_code, { secret: 'wrong' });
    assert(t.status === 401 && t.body.error === 'invalid_client', `token: ${t.status} ${JSON.stringify(t.body)}`);
  });
  await check('SIGTERM -> clean exit 0', async () => {
    const r = await idp.stop();
    assert(r.code === 0, `exit ${JSON.stringify(r)}`);
  });

  // ------------------------------------------------------------ ES256
  await check('ES256: alice approved -> ES256 ID token verifying against JWKS', async () => {
    const es = await startIdp({ IDP_ID_TOKEN_ALG: 'ES256' });
    try {
      const m = await discover(es.issuer);
      const jwks = await (await fetch(m.jwks_uri)).json();
      assert(jwks.keys.length === 1 && jwks.keys[0].kty === 'EC' && jwks.keys[0].crv === 'P-256', `jwks ${JSON.stringify(jwks)}`);
      await loginCase(es, m, 'ES256', 'alice', 'alice-pw', { preferred_username: 'alice', groups: ['sre', 'dba'], amr: ['pwd'] });
    } finally { await es.stop(); }
  });

  // ------------------------------------------------------------ short TTL
  await check('IDP_DEVICE_TTL=3: expired code -> expired_token, approve -> 410', async () => {
    const s = await startIdp({ IDP_DEVICE_TTL: '3', IDP_DEVICE_INTERVAL: '2' });
    try {
      const m = await discover(s.issuer);
      const d = await deviceAuth(m);
      assert(d.body.expires_in === 3 && d.body.interval === 2, `device ${JSON.stringify(d.body)}`);
      await new Promise((r) => { setTimeout(r, 4000); });
      const a = await approve(s.issuer, { user_code: d.body.user_code, username: 'alice', password: 'alice-pw' });
      assert(a.status === 410 && /ExpiredError/.test(a.body.error), `approve: ${a.status} ${JSON.stringify(a.body)}`);
      const t = await tokenOnce(m, d.body.device_code);
      assert(t.status === 400 && t.body.error === 'expired_token', JSON.stringify(t.body));
    } finally { await s.stop(); }
  });

  // ------------------------------------------------------------ public client, custom users/client
  await check('public client (IDP_CLIENT_SECRET=""), IDP_CLIENT_ID and IDP_USERS override', async () => {
    const users = { eve: { password: 'eve-pw', preferred_username: 'eve', groups: ['ops'], amr: ['hwk'] } };
    const s = await startIdp({ IDP_CLIENT_SECRET: '', IDP_CLIENT_ID: 'cli', IDP_USERS: JSON.stringify(users) });
    try {
      const m = await discover(s.issuer);
      const d = await deviceAuth(m, { clientId: 'cli', secret: null });
      assert(d.status === 200, `device ${d.status} ${JSON.stringify(d.body)}`);
      const gone = await approve(s.issuer, { user_code: d.body.user_code, username: 'alice', password: 'alice-pw' });
      assert(gone.status === 401, `alice should not exist: ${gone.status} ${JSON.stringify(gone.body)}`);
      const d2 = await deviceAuth(m, { clientId: 'cli', secret: null });
      const a = await approve(s.issuer, { user_code: d2.body.user_code, username: 'eve', password: 'eve-pw' });
      assert(a.status === 200, `approve ${a.status} ${JSON.stringify(a.body)}`);
      const t = await poll(m, d2.body, { clientId: 'cli', secret: null });
      assert(t.status === 200, `token ${t.status} ${JSON.stringify(t.body)}`);
      const c = await verifyIdToken(m, t.body.id_token, 'RS256');
      assert(c.aud === 'cli' && c.preferred_username === 'eve' && same(c.groups, ['ops']) && same(c.amr, ['hwk']), JSON.stringify(c));
    } finally { await s.stop(); }
  });

  await check('IDP_PORT=0 picks a port; client_secret_post is accepted too', async () => {
    const s = await startIdp({ IDP_PORT: '0' });
    try {
      assert(/^http:\/\/127\.0\.0\.1:[1-9]\d*$/.test(s.issuer), s.issuer);
      const m = await discover(s.issuer);
      const d = await postForm(m.device_authorization_endpoint, { scope: 'openid groups', client_id: 'portvakt', client_secret: 'portvakt-secret' });
      assert(d.status === 200, `device ${d.status} ${JSON.stringify(d.body)}`);
      const bad = await postForm(m.device_authorization_endpoint, { scope: 'openid', client_id: 'portvakt' });
      assert(bad.status === 401 && bad.body.error === 'invalid_client', `no secret: ${bad.status} ${JSON.stringify(bad.body)}`);
    } finally { await s.stop(); }
  });

  // ------------------------------------------------------------ code flow (browser logins)
  await check('IDP_REDIRECT_URIS: code flow with PKCE through the login and consent forms; nonce in the ID token', async () => {
    const redirect = 'http://127.0.0.1:9/auth/callback';
    const s = await startIdp({ IDP_REDIRECT_URIS: redirect });
    try {
      const m = await discover(s.issuer);
      assert(m.grant_types_supported.includes('authorization_code'), 'code grant not supported');
      const verifier = crypto.randomBytes(32).toString('base64url');
      const challenge = crypto.createHash('sha256').update(verifier).digest('base64url');
      const params = {
        client_id: 'portvakt', response_type: 'code', redirect_uri: redirect, scope: 'openid profile groups',
        state: 'state-1', nonce: 'nonce-1', code_challenge: challenge, code_challenge_method: 'S256',
      };
      const back = await browserLogin(m, params, redirect, 'alice', 'alice-pw');
      assert(back.get('state') === 'state-1' && back.get('code'), `callback ${back}`);
      const t = await postForm(m.token_endpoint, {
        grant_type: 'authorization_code', code: back.get('code'), redirect_uri: redirect, code_verifier: verifier,
      }, basic('portvakt', 'portvakt-secret'));
      assert(t.status === 200 && t.body.id_token, `token ${t.status} ${JSON.stringify(t.body)}`);
      const c = await verifyIdToken(m, t.body.id_token, 'RS256');
      assert(c.nonce === 'nonce-1' && c.preferred_username === 'alice' && same(c.groups, ['sre', 'dba']), JSON.stringify(c));
      // Without PKCE the provider refuses at once (back to the redirect URI with an error).
      const noPkce = { ...params };
      delete noPkce.code_challenge;
      delete noPkce.code_challenge_method;
      const refused = await browserLogin(m, noPkce, redirect, 'alice', 'alice-pw');
      assert(refused.get('error') === 'invalid_request', `without PKCE: ${refused}`);
    } finally { await s.stop(); }
  });
  await check('without IDP_REDIRECT_URIS the client has no code grant', async () => {
    const s = await startIdp({});
    try {
      const m = await discover(s.issuer);
      const q = new URLSearchParams({
        client_id: 'portvakt', response_type: 'code', redirect_uri: 'http://127.0.0.1:9/cb', scope: 'openid',
      });
      const res = await fetch(`${m.authorization_endpoint}?${q}`, { redirect: 'manual' });
      assert(res.status === 400, `authorization without a redirect URI: ${res.status}`);
    } finally { await s.stop(); }
  });

  await check('missing IDP_PORT -> non-zero exit, no READY', async () => {
    const child = spawn(process.execPath, [SERVER], { env: { ...process.env, IDP_PORT: '' }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (x) => { out += x; });
    const code = await new Promise((r) => child.once('exit', r));
    assert(code !== 0 && out === '', `exit ${code} stdout ${JSON.stringify(out)}`);
  });
}

try {
  await main();
} catch (e) {
  failures += 1;
  console.log(`FAIL (setup) ${e.message}`);
} finally {
  for (const c of children) c.kill('SIGKILL');
}
console.log(failures ? `${failures} FAILED` : 'ALL PASSED');
process.exit(failures ? 1 : 0);
