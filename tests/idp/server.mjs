// Test OpenID Connect provider for portvakt's end-to-end tests.
//
// A real `oidc-provider` instance (device flow on, one static client, static
// users) plus minimal login/consent pages and a test-only endpoint that
// approves or denies a user code by driving the provider's own pages over
// loopback, exactly as a browser would. See README.md.
//
// stdout carries exactly one line, `IDP READY <issuer>`; everything else goes
// to stderr.

import * as crypto from 'node:crypto';
import * as http from 'node:http';

import Provider from 'oidc-provider';

import { approveDevice } from './approve.mjs';

// oidc-provider prints its notices with console.info (stdout). Keep stdout for
// the READY line only.
console.log = console.error;
console.info = console.error;
console.debug = console.error;

const log = (...args) => console.error('[idp]', ...args);

function fail(msg) {
  console.error(`[idp] fatal: ${msg}`);
  process.exit(2);
}

// ---------------------------------------------------------------- settings

function intEnv(name, dflt, min) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return dflt;
  if (!/^\d+$/.test(raw) || Number(raw) < min) fail(`${name} must be an integer >= ${min}, got ${JSON.stringify(raw)}`);
  return Number(raw);
}

if (process.env.IDP_PORT === undefined || process.env.IDP_PORT === '') fail('IDP_PORT is required');
const PORT = intEnv('IDP_PORT', 0, 0);
if (PORT > 65535) fail('IDP_PORT out of range');
const CLIENT_ID = process.env.IDP_CLIENT_ID || 'portvakt';
const CLIENT_SECRET = process.env.IDP_CLIENT_SECRET ?? 'portvakt-secret';
// oidc-provider accepts both client_secret_basic and client_secret_post for a
// client registered with either.
const CLIENT_AUTH = CLIENT_SECRET === '' ? 'none' : 'client_secret_basic';
const ID_TOKEN_ALG = process.env.IDP_ID_TOKEN_ALG || 'RS256';
if (!['RS256', 'ES256'].includes(ID_TOKEN_ALG)) fail(`IDP_ID_TOKEN_ALG must be RS256 or ES256, got ${ID_TOKEN_ALG}`);
const DEVICE_INTERVAL = intEnv('IDP_DEVICE_INTERVAL', 1, 0);
const DEVICE_TTL = intEnv('IDP_DEVICE_TTL', 600, 1);
// Browser logins (authorization code flow with PKCE) for these redirect URIs,
// comma-separated; empty: the client may use the device grant only.
const REDIRECT_URIS = (process.env.IDP_REDIRECT_URIS || '').split(',').map((u) => u.trim()).filter(Boolean);
for (const u of REDIRECT_URIS) {
  let parsed;
  try {
    parsed = new URL(u);
  } catch (e) {
    fail(`IDP_REDIRECT_URIS: ${JSON.stringify(u)} is not a URL`);
  }
  if (!['http:', 'https:'].includes(parsed.protocol)) fail(`IDP_REDIRECT_URIS: ${JSON.stringify(u)} is not http(s)`);
}

const DEFAULT_USERS = {
  alice: {
    password: 'alice-pw', preferred_username: 'alice', email: 'alice@example.com', groups: ['sre', 'dba'],
  },
  bob: { password: 'bob-pw', preferred_username: 'bob', groups: ['dev'] },
  carol: { password: 'carol-pw', preferred_username: 'carol-idp', groups: ['sre'] },
  'mfa-dave': {
    password: 'dave-pw', preferred_username: 'dave', groups: ['sre'], amr: ['pwd', 'otp'],
  },
};

function loadUsers() {
  const raw = process.env.IDP_USERS;
  if (raw === undefined || raw === '') return DEFAULT_USERS;
  let parsed;
  try {
    parsed = JSON.parse(raw);
  } catch (e) {
    fail(`IDP_USERS is not valid JSON: ${e.message}`);
  }
  if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
    fail('IDP_USERS must be a JSON object: {"account-id": {"password": "...", ...claims}}');
  }
  for (const [id, u] of Object.entries(parsed)) {
    if (!u || typeof u !== 'object' || typeof u.password !== 'string') {
      fail(`IDP_USERS[${JSON.stringify(id)}] needs a string "password"`);
    }
  }
  return parsed;
}

const USERS = loadUsers();
// Claims an account may carry (by scope). Anything else in a user entry is ignored.
// `amr` and `auth_time` come from the login, not the account; they are listed
// under `openid` so that they pass the provider's scope mask into the ID token.
const CLAIMS = {
  openid: ['sub', 'amr', 'auth_time'],
  profile: ['preferred_username', 'name'],
  email: ['email', 'email_verified'],
  groups: ['groups'],
};
const CLAIM_NAMES = Object.values(CLAIMS).flat().filter((c) => !['sub', 'amr', 'auth_time'].includes(c));

// ---------------------------------------------------------------- keys

function signingKey(alg) {
  const { privateKey } = alg === 'ES256'
    ? crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' })
    : crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return {
    ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}`,
  };
}

// ---------------------------------------------------------------- pages

const esc = (s) => String(s ?? '').replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

function page(title, body) {
  return `<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>${esc(title)}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{font-family:sans-serif;max-width:28em;margin:2em auto}.red{color:#b00}
input,button{display:block;margin:.4em 0;font-size:1em}</style></head>
<body><h1>${esc(title)}</h1>
${body}
</body></html>`;
}

const deviceFlow = {
  enabled: true,
  // Error pages of /device carry a machine-readable marker for the test driver.
  async userCodeInputSource(ctx, form, out, err) {
    let msg = '<p>Enter the code displayed on your device</p>';
    if (err) {
      const name = err.name === 'AbortedError' || err.userCode || err.name === 'NoCodeError'
        ? err.name : (out?.error || err.name);
      const text = err.name === 'AbortedError'
        ? 'The sign-in request was aborted.'
        : (err.message || out?.error_description || 'There was an error processing your request');
      msg = `<p class="red" id="device-error" data-error="${esc(name)}" data-message="${esc(text)}">${esc(text)}</p>`;
    }
    ctx.type = 'html';
    ctx.body = page('Device sign-in', `${msg}\n${form}\n<button type="submit" form="op.deviceInputForm">Continue</button>`);
  },
  async userCodeConfirmSource(ctx, form, client, deviceInfo, userCode) {
    ctx.type = 'html';
    ctx.body = page('Confirm device', `<p><strong>${esc(client.clientName || client.clientId)}</strong>
wants to sign you in. The device should display this code:</p>
<p><code id="user-code">${esc(userCode)}</code></p>
${form}
<button autofocus type="submit" form="op.deviceConfirmForm">Continue</button>
<button type="submit" form="op.deviceConfirmForm" value="yes" name="abort">Abort</button>`);
  },
  async successSource(ctx) {
    ctx.type = 'html';
    ctx.body = page('Sign-in success', '<p id="device-success">Your device is signed in. You can close this page.</p>');
  },
};

// ---------------------------------------------------------------- provider

function makeProvider(issuer) {
  const client = {
    client_id: CLIENT_ID,
    client_name: 'portvakt (test)',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code',
      ...(REDIRECT_URIS.length ? ['authorization_code'] : [])],
    redirect_uris: REDIRECT_URIS,
    response_types: REDIRECT_URIS.length ? ['code'] : [],
    token_endpoint_auth_method: CLIENT_AUTH,
    id_token_signed_response_alg: ID_TOKEN_ALG,
  };
  if (CLIENT_AUTH !== 'none') client.client_secret = CLIENT_SECRET;

  const provider = new Provider(issuer, {
    clients: [client],
    jwks: { keys: [signingKey(ID_TOKEN_ALG)] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    scopes: ['openid', 'profile', 'email', 'groups'],
    claims: CLAIMS,
    conformIdTokenClaims: false,
    features: { devInteractions: { enabled: false }, deviceFlow },
    // The code flow must carry PKCE (S256), whatever the client type.
    pkce: { required: () => true },
    interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
    ttl: {
      DeviceCode: DEVICE_TTL,
      IdToken: 3600,
      AccessToken: 3600,
      Interaction: 3600,
      Session: 3600,
      Grant: 3600,
    },
    async findAccount(ctx, id) {
      const user = Object.hasOwn(USERS, id) ? USERS[id] : undefined;
      if (!user) return undefined;
      return {
        accountId: id,
        async claims() {
          const out = { sub: id };
          for (const c of CLAIM_NAMES) if (user[c] !== undefined) out[c] = user[c];
          return out;
        },
      };
    },
    async renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', Object.entries(out)
        .map(([k, v]) => `<p class="red"><strong>${esc(k)}</strong>: ${esc(v)}</p>`).join('\n'));
    },
  });

  // The provider leaves `interval` out (RFC 8628 default 5 s); tests want fast polling.
  provider.on('device_authorization.success', (ctx, body) => {
    body.interval = DEVICE_INTERVAL;
  });
  for (const ev of ['server_error', 'grant.error', 'device_authorization.error', 'code_verification.error',
    'device_resume.error', 'introspection.error', 'userinfo.error', 'jwks.error', 'discovery.error']) {
    provider.on(ev, (ctx, err) => log(`${ev}: ${err?.name}: ${err?.message}${err?.error_detail ? ` (${err.error_detail})` : ''}`));
  }
  provider.on('grant.success', (ctx) => log(`grant.success client=${ctx.oidc.client?.clientId} account=${ctx.oidc.entities.Account?.accountId}`));
  return provider;
}

// ---------------------------------------------------------------- interactions

async function readBody(req, limit = 64 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const c of req) {
    size += c.length;
    if (size > limit) throw Object.assign(new Error('request body too large'), { status: 413 });
    chunks.push(c);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function send(res, status, type, body, headers = {}) {
  res.writeHead(status, {
    'content-type': type, 'cache-control': 'no-store', ...headers,
  });
  res.end(body);
}
const sendHtml = (res, status, body) => send(res, status, 'text/html; charset=utf-8', body);
const sendJson = (res, status, obj) => send(res, status, 'application/json', JSON.stringify(obj));

function loginPage(uid, { error, login } = {}) {
  return page('Sign in', `${error ? `<p class="red" id="login-error">${esc(error)}</p>` : ''}
<form id="login" method="post" action="/interaction/${esc(uid)}/login" autocomplete="off">
<label>Username <input name="login" value="${esc(login)}" autofocus required></label>
<label>Password <input name="password" type="password" required></label>
<button type="submit">Sign in</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Cancel</a></p>`);
}

function consentPage(uid, details, clientId) {
  const scopes = details.missingOIDCScope || [];
  const claims = (details.missingOIDCClaims || []).filter((c) => !['sub', 'sid', 'auth_time', 'acr', 'amr', 'iss'].includes(c));
  return page('Authorize', `<p>Client <strong>${esc(clientId)}</strong> asks for:</p>
<ul>${scopes.map((s) => `<li>scope <code>${esc(s)}</code></li>`).join('')}${claims.map((c) => `<li>claim <code>${esc(c)}</code></li>`).join('')}</ul>
<form id="consent" method="post" action="/interaction/${esc(uid)}/confirm">
<button type="submit" autofocus>Allow</button>
</form>
<p><a href="/interaction/${esc(uid)}/abort">Deny</a></p>`);
}

async function handleInteraction(provider, req, res, url) {
  const m = url.pathname.match(/^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/);
  if (!m) return sendHtml(res, 404, page('Not found', '<p>No such page.</p>'));
  const [, uid, action] = m;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (e) {
    return sendHtml(res, 400, page('Error', `<p class="red" id="interaction-error">interaction not found or expired: ${esc(e.message)}</p>`));
  }
  if (details.uid !== uid) {
    return sendHtml(res, 400, page('Error', '<p class="red" id="interaction-error">interaction mismatch</p>'));
  }
  const { prompt, params, session } = details;

  if (!action && req.method === 'GET') {
    if (prompt.name === 'login') return sendHtml(res, 200, loginPage(uid));
    if (prompt.name === 'consent') return sendHtml(res, 200, consentPage(uid, prompt.details, params.client_id));
    return sendHtml(res, 501, page('Error', `<p class="red">unsupported prompt ${esc(prompt.name)}</p>`));
  }
  if (action === 'abort' && req.method === 'GET') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'End-User aborted interaction',
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'login' && req.method === 'POST') {
    if (prompt.name !== 'login') return sendHtml(res, 400, page('Error', '<p class="red">not at the login step</p>'));
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') || '';
    const user = Object.hasOwn(USERS, login) ? USERS[login] : undefined;
    if (!user || !crypto.timingSafeEqual(
      crypto.createHash('sha256').update(form.get('password') || '').digest(),
      crypto.createHash('sha256').update(user.password).digest(),
    )) {
      log(`login failed for ${JSON.stringify(login)}`);
      return sendHtml(res, 401, loginPage(uid, { error: 'Invalid username or password.', login }));
    }
    log(`login ok for ${login}`);
    return provider.interactionFinished(req, res, {
      login: { accountId: login, amr: Array.isArray(user.amr) ? user.amr : ['pwd'], ...(user.acr ? { acr: user.acr } : {}) },
    }, { mergeWithLastSubmission: false });
  }
  if (action === 'confirm' && req.method === 'POST') {
    if (prompt.name !== 'consent') return sendHtml(res, 400, page('Error', '<p class="red">not at the consent step</p>'));
    await readBody(req);
    const grant = details.grantId
      ? await provider.Grant.find(details.grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    if (prompt.details.missingOIDCScope) grant.addOIDCScope(prompt.details.missingOIDCScope.join(' '));
    if (prompt.details.missingOIDCClaims) grant.addOIDCClaims(prompt.details.missingOIDCClaims);
    if (prompt.details.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(prompt.details.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    return provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
  }
  return sendHtml(res, 405, page('Error', '<p>method not allowed</p>'));
}

// ---------------------------------------------------------------- test endpoints

async function handleApprove(issuer, req, res) {
  let body;
  try {
    body = JSON.parse(await readBody(req));
  } catch (e) {
    return sendJson(res, 400, { ok: false, error: `body must be JSON: ${e.message}` });
  }
  const { user_code: userCode, username, password, decision = 'approve' } = body || {};
  if (typeof userCode !== 'string' || !userCode) return sendJson(res, 400, { ok: false, error: 'user_code (string) is required' });
  if (!['approve', 'deny'].includes(decision)) return sendJson(res, 400, { ok: false, error: 'decision must be "approve" or "deny"' });
  if (decision === 'approve' && (typeof username !== 'string' || typeof password !== 'string')) {
    return sendJson(res, 400, { ok: false, error: 'username and password (strings) are required to approve' });
  }
  const result = await approveDevice(issuer, {
    userCode, username, password, decision,
  });
  log(`/test/approve ${decision} ${userCode} as ${username ?? '-'}: ${result.ok ? 'ok' : `${result.status} ${result.error}`}`);
  if (result.ok) return sendJson(res, 200, { ok: true });
  return sendJson(res, result.status || 500, { ok: false, error: result.error });
}

// ---------------------------------------------------------------- server

let provider;
let issuer;
let callback;

const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://127.0.0.1');
  res.on('finish', () => log(`${req.method} ${url.pathname} -> ${res.statusCode}`));
  try {
    if (url.pathname === '/test/health') {
      return sendJson(res, 200, { ok: true, issuer });
    }
    if (url.pathname === '/test/approve') {
      if (req.method !== 'POST') return sendJson(res, 405, { ok: false, error: 'use POST' });
      return await handleApprove(issuer, req, res);
    }
    if (url.pathname.startsWith('/interaction/')) {
      return await handleInteraction(provider, req, res, url);
    }
    return callback(req, res);
  } catch (e) {
    log(`error on ${req.method} ${url.pathname}:`, e);
    if (!res.headersSent) {
      if (url.pathname.startsWith('/test/')) return sendJson(res, e.status || 500, { ok: false, error: String(e.message || e) });
      return sendHtml(res, e.status || 500, page('Error', `<p class="red">${esc(e.message || e)}</p>`));
    }
    res.destroy();
  }
  return undefined;
});

server.on('error', (e) => fail(`listen on 127.0.0.1:${PORT}: ${e.message}`));
server.listen(PORT, '127.0.0.1', () => {
  // IDP_PORT=0 picks a free port; the READY line tells which.
  const { port } = server.address();
  issuer = `http://127.0.0.1:${port}`;
  provider = makeProvider(issuer);
  callback = provider.callback();
  log(`issuer ${issuer}, client ${CLIENT_ID} (${CLIENT_AUTH}), id token ${ID_TOKEN_ALG}, `
    + `device interval ${DEVICE_INTERVAL}s ttl ${DEVICE_TTL}s, redirect uris ${REDIRECT_URIS.join(',') || '-'}, users ${Object.keys(USERS).join(',')}`);
  process.stdout.write(`IDP READY ${issuer}\n`);
});

function shutdown(sig) {
  log(`${sig}: shutting down`);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
