// Drives the provider's own device-flow pages over loopback, exactly as a
// browser would, to approve or deny a user code. Used by POST /test/approve.

// A minimal cookie jar for one host: honours Path, Max-Age and Expires.
export class CookieJar {
  #cookies = new Map(); // `${name}\0${path}` -> { name, value, path, expires }

  store(res, url) {
    for (const line of res.headers.getSetCookie()) {
      const [pair, ...attrs] = line.split(';');
      const eq = pair.indexOf('=');
      if (eq < 1) continue;
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      let path = url.pathname.replace(/\/[^/]*$/, '') || '/';
      let expires = Infinity;
      for (const attr of attrs) {
        const [k, ...v] = attr.split('=');
        const key = k.trim().toLowerCase();
        const val = v.join('=').trim();
        if (key === 'path' && val.startsWith('/')) path = val;
        else if (key === 'max-age') expires = Date.now() + Number(val) * 1000;
        else if (key === 'expires' && expires === Infinity) expires = Date.parse(val);
      }
      const id = `${name}\0${path}`;
      if (expires <= Date.now() || value === '') this.#cookies.delete(id);
      else this.#cookies.set(id, { name, value, path, expires });
    }
  }

  header(url) {
    const now = Date.now();
    const matches = [...this.#cookies.values()]
      .filter((c) => c.expires > now && (url.pathname === c.path
        || url.pathname.startsWith(c.path.endsWith('/') ? c.path : `${c.path}/`)))
      .sort((a, b) => b.path.length - a.path.length);
    return matches.map((c) => `${c.name}=${c.value}`).join('; ');
  }
}

class Step extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// One browser-like request; follows redirects (303/302/301 become GET).
async function browse(jar, url, { method = 'GET', form } = {}) {
  let current = new URL(url);
  let opts = { method, form };
  for (let hop = 0; hop < 10; hop += 1) {
    const headers = { accept: 'text/html' };
    const cookie = jar.header(current);
    if (cookie) headers.cookie = cookie;
    let body;
    if (opts.form) {
      headers['content-type'] = 'application/x-www-form-urlencoded';
      body = new URLSearchParams(opts.form).toString();
    }
    const res = await fetch(current, {
      method: opts.method, headers, body, redirect: 'manual', signal: AbortSignal.timeout(10_000),
    });
    jar.store(res, current);
    const location = res.headers.get('location');
    if (res.status >= 300 && res.status < 400 && location) {
      await res.arrayBuffer();
      const next = new URL(location, current);
      if (next.origin !== current.origin) throw new Step(502, `redirected off the provider to ${next}`);
      current = next;
      if (res.status !== 307 && res.status !== 308) opts = { method: 'GET' };
      continue;
    }
    return { status: res.status, url: current, html: await res.text() };
  }
  throw new Step(502, 'too many redirects');
}

const attr = (html, re) => {
  const m = html.match(re);
  return m ? m[1].replace(/&quot;/g, '"').replace(/&#39;/g, "'").replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&') : undefined;
};

// Explains a /device page that is not the one we expected.
function deviceError(page, stage) {
  const name = attr(page.html, /data-error="([^"]*)"/);
  const message = attr(page.html, /data-message="([^"]*)"/);
  const statusFor = {
    NotFoundError: 404, ExpiredError: 410, AlreadyUsedError: 409, NoCodeError: 400,
  };
  if (name) return new Step(statusFor[name] || (page.status >= 400 ? page.status : 502), `${stage}: ${name}: ${message}`);
  const text = page.html.replace(/<style[\s\S]*?<\/style>/g, '').replace(/<[^>]+>/g, ' ').replace(/\s+/g, ' ').trim();
  return new Step(502, `${stage}: unexpected page (HTTP ${page.status} at ${page.url.pathname}): ${text.slice(0, 300)}`);
}

async function drive(issuer, {
  userCode, username, password, decision,
}) {
  const jar = new CookieJar();

  // 1. The device page, as a human opens it: read the xsrf field.
  const start = await browse(jar, `${issuer}/device`);
  const xsrf = attr(start.html, /name="xsrf" value="([^"]*)"/);
  if (start.status !== 200 || !xsrf) throw deviceError(start, 'GET /device');

  // 2. Submit the user code with confirm=yes (or abort=yes).
  const form = { xsrf, user_code: userCode };
  if (decision === 'deny') form.abort = 'yes';
  else form.confirm = 'yes';
  let page = await browse(jar, `${issuer}/device`, { method: 'POST', form });

  if (decision === 'deny') {
    if (attr(page.html, /data-error="([^"]*)"/) === 'AbortedError') return;
    throw deviceError(page, 'POST /device (abort)');
  }

  // 3. Login and consent pages, until the provider's success page.
  for (let step = 0; step < 6; step += 1) {
    if (page.html.includes('id="device-success"')) return;
    const loginAction = attr(page.html, /<form id="login" method="post" action="([^"]*)"/);
    const consentAction = attr(page.html, /<form id="consent" method="post" action="([^"]*)"/);
    if (loginAction) {
      if (page.html.includes('id="login-error"')) throw new Step(401, `login as ${JSON.stringify(username)} failed: invalid username or password`);
      page = await browse(jar, new URL(loginAction, page.url), { method: 'POST', form: { login: username, password } });
      if (page.status === 401) throw new Step(401, `login as ${JSON.stringify(username)} failed: invalid username or password`);
    } else if (consentAction) {
      page = await browse(jar, new URL(consentAction, page.url), { method: 'POST', form: {} });
    } else {
      throw deviceError(page, 'after POST /device');
    }
  }
  throw new Step(502, 'the provider did not reach its success page');
}

export async function approveDevice(issuer, request) {
  try {
    await drive(issuer, request);
    return { ok: true };
  } catch (e) {
    if (e instanceof Step) return { ok: false, status: e.status, error: e.message };
    return { ok: false, status: 500, error: `internal: ${e.message}${e.cause ? ` (${e.cause.message || e.cause})` : ''}` };
  }
}
