#!/usr/bin/env python3
"""The web console in a real browser (issue 18): headless Chromium, driven
through chromium-driver's WebDriver protocol (W3C, plain HTTP and JSON: the
standard library is enough), against a real `vouch-backend serve`, with a
real gateway and a device in session.

It walks what an operator does: log in, search, open a device, revoke it
after the confirmation page (and the device's live session closes on its
gateway), log out; a viewer who sees no revoke button and is refused the
page anyway; a POST without the CSRF token refused; an import with a dry run.
Screenshots of every page go to $CARGO_TARGET_DIR/console-screenshots/.

Usage: CARGO_TARGET_DIR=... .ci/console.py   (the debug binaries built)
Prints "N passed, M failed"; exits 1 on any failure.
"""
import base64
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, os.environ.get("PROFILE", "debug"))
B, G, P = (os.path.join(BIN, n) for n in ("vouch-backend", "vouch-gateway", "vouch-peripheral"))
SHOTS = os.path.join(TARGET, "console-screenshots")

passed, failed = 0, 0
procs = []


def ok(what):
    global passed
    passed += 1
    print(f"ok: {what}", flush=True)


def bad(what):
    global failed
    failed += 1
    print(f"FAILED: {what}", flush=True)


def check(cond, what):
    (ok if cond else bad)(what)
    return cond


def port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def run(*args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def wait_for(what, fn, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            v = fn()
            if v:
                return v
        except Exception:  # noqa: BLE001 - anything but success means "not yet"
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out waiting for {what}")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class WebDriver:
    """The few W3C WebDriver commands this needs."""

    def __init__(self, url):
        self.url = url
        caps = {
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "acceptInsecureCerts": True,
                    "goog:chromeOptions": {
                        "binary": shutil.which("chromium") or "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1280,900"],
                    },
                }
            }
        }
        self.sid = self.call("POST", "/session", caps)["sessionId"]

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return json.load(r)["value"]
        except urllib.error.HTTPError as e:
            raise RuntimeError(f"webdriver {method} {path}: {e.read()[:300]!r}") from None

    def s(self, method, path, body=None):
        return self.call(method, f"/session/{self.sid}{path}", body)

    def go(self, url):
        self.s("POST", "/url", {"url": url})

    def find(self, css):
        el = self.s("POST", "/element", {"using": "css selector", "value": css})
        return next(iter(el.values()))

    def finds(self, css):
        return [next(iter(e.values())) for e in self.s("POST", "/elements", {"using": "css selector", "value": css})]

    def type(self, css, text):
        self.s("POST", f"/element/{self.find(css)}/value", {"text": text})

    def click(self, css):
        self.s("POST", f"/element/{self.find(css)}/click", {})

    def click_to(self, css, text, timeout=15):
        """Clicks, then waits for the page that has `text` (a click returns
        before the navigation it starts has finished)."""
        self.click(css)
        return wait_for(f"a page with {text!r} after clicking {css}", lambda: text in self.source(), timeout)

    def source(self):
        return self.s("GET", "/source")

    def current(self):
        return self.s("GET", "/url")

    def cookies(self):
        return self.s("GET", "/cookie")

    def shot(self, name):
        png = base64.b64decode(self.s("GET", "/screenshot"))
        with open(os.path.join(SHOTS, f"{name}.png"), "wb") as f:
            f.write(png)

    def quit(self):
        try:
            self.s("DELETE", "")
        except Exception:  # noqa: BLE001
            pass


def main():
    for b in (B, G, P):
        if not os.path.exists(b):
            sys.exit(f"{b} is not built (cargo build --workspace --bins)")
    driver_bin = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not os.path.exists(driver_bin):
        sys.exit("chromedriver not found (apt-get install chromium chromium-driver)")
    os.makedirs(SHOTS, exist_ok=True)
    w = tempfile.mkdtemp(prefix="vouch-console-")
    vb, vg, vp = (os.path.join(w, d) for d in ("vb", "vg", "vp"))
    bp, gp, dp = port(), port(), port()
    backend = f"https://127.0.0.1:{bp}"
    try:
        # The backend, a gateway and a device in session (as .ci/quickstart.sh).
        run(B, "--data-dir", vb, "init")
        blog = open(os.path.join(w, "b.log"), "w")
        procs.append(subprocess.Popen([B, "--data-dir", vb, "serve", "--listen", f"127.0.0.1:{bp}"], stdout=blog, stderr=blog))
        wait_for("the backend", lambda: "listening on" in read(os.path.join(w, "b.log")))
        key = re.search(r"^public key:\s+(\S+)", run(G, "init", "--key", os.path.join(vg, "identity.pem")), re.M).group(1)
        run(B, "--data-dir", vb, "enroll", "gateway", "--public-key", key, "--site", "lab", "--out", os.path.join(vg, "client.pem"))
        shutil.copy(os.path.join(vb, "ca.pem"), os.path.join(vg, "ca.pem"))
        cfg = run(G, "example-config")
        for a, b in ((("/var/lib/vouch-gateway"), vg), ("/etc/vouch/backend-ca.pem", os.path.join(vg, "ca.pem")),
                     ("https://backend.example.net:8443", backend), ("/run/vouch-gateway", vg), ("127.0.0.1:7800", f"127.0.0.1:{gp}")):
            cfg = cfg.replace(a, b)
        with open(os.path.join(vg, "gateway.toml"), "w") as f:
            f.write(cfg)
        glog_path = os.path.join(w, "g.log")
        glog = open(glog_path, "w")
        procs.append(subprocess.Popen([G, "run", "--config", os.path.join(vg, "gateway.toml")], stdout=glog, stderr=glog))
        wait_for("the gateway", lambda: "TCP transport listening" in read(glog_path))
        rows = os.path.join(w, "row.ndjson")
        with open(rows, "w") as f:
            f.write(run(P, "keygen", "--dir", vp, "--group", "meters"))
        dev = json.loads(read(rows))["id"] if "\"id\"" in read(rows) else None
        run(B, "--data-dir", vb, "import", rows)
        if dev is None:
            dev = json.loads(run(B, "--data-dir", vb, "--json", "list", "peripheral"))["items"][0]["id"]
        run(B, "--data-dir", vb, "associate", "--peripheral", "group:meters", "--gateway", "site:lab", "--scope", "telemetry")
        run(B, "--data-dir", vb, "export-anchor", "--out", os.path.join(w, "anchor.json"))
        run(P, "provision", "--dir", vp, "--anchor", os.path.join(w, "anchor.json"))
        plog_path = os.path.join(w, "p.log")
        plog = open(plog_path, "w")
        procs.append(subprocess.Popen([P, "run", "--dir", vp, "--connect", f"tcp://127.0.0.1:{gp}", "--count", "600", "--interval", "1"],
                                      stdout=subprocess.DEVNULL, stderr=plog))
        wait_for("the device's session", lambda: "session established" in read(glog_path))
        ok("a device is in session through the gateway")
        tokens = {}
        for name, role in (("otto", "operator"), ("vera", "viewer")):
            path = os.path.join(w, f"{name}.token")
            run(B, "--data-dir", vb, "operators", "add", name, "--role", role, "--out", path)
            tokens[name] = read(path).strip()

        dlog = open(os.path.join(w, "chromedriver.log"), "w")
        procs.append(subprocess.Popen([driver_bin, f"--port={dp}"], stdout=dlog, stderr=dlog))
        wait_for("chromedriver", lambda: urllib.request.urlopen(f"http://127.0.0.1:{dp}/status", timeout=2).status == 200)
        d = WebDriver(f"http://127.0.0.1:{dp}")
        try:
            browse(d, backend, dev, tokens, glog_path, plog_path, vb)
        except Exception:
            # What the browser shows when a step fails.
            try:
                d.shot("failure")
                print(f"--- the page at {d.current()}:\n{re.sub(r'<[^>]+>', ' ', d.source())[:800]}")
            except Exception:  # noqa: BLE001
                pass
            raise
        finally:
            d.quit()
    except Exception as e:  # noqa: BLE001 - reported as a failure with the logs
        bad(f"{type(e).__name__}: {e}")
        for log in ("b.log", "g.log", "p.log", "chromedriver.log"):
            print(f"--- {log}\n" + read(os.path.join(w, log))[-1500:])
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(w, ignore_errors=True)
    print(f"screenshots: {SHOTS}")
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


def login(d, backend, token, shot=None):
    d.go(f"{backend}/console")
    check(d.current().endswith("/console/login"), "without a session the console asks for a login")
    if shot:
        d.shot(shot)
    d.type("input[name=token]", token)
    d.click("button[type=submit]")
    wait_for("the overview after the login", lambda: d.current().endswith("/console"), timeout=10)


def browse(d, backend, dev, tokens, glog_path, plog_path, vb):
    # The operator logs in.
    login(d, backend, tokens["otto"], shot="01-login")
    src = d.source()
    check(d.current().endswith("/console") and "Overview" in src and "otto" in src, "the operator logs in to the overview")
    cookie = next((c for c in d.cookies() if c["name"] == "__Host-vouch_console"), {})
    check(cookie.get("httpOnly") and cookie.get("secure") and cookie.get("sameSite") == "Strict",
          f"the session cookie is HttpOnly, Secure, SameSite=Strict ({cookie.get('sameSite')})")
    d.shot("02-overview")

    # Search, then the device's page.
    d.go(f"{backend}/console/devices")
    d.type("input[name=group]", "meters")
    d.click_to("form.filters button[type=submit]", dev)
    check(dev in d.source(), "searching the group finds the device")
    d.shot("03-devices")
    d.click_to(f"a[href='/console/devices/{dev}']", "status-active")
    src = d.source()
    check("status-active" in src, "the device page shows it active")
    wait_for("the gateway's attach report", lambda: (d.go(f"{backend}/console/devices/{dev}") or True) and "attached to" in d.source()
             and re.search(r"/console/gateways/[0-9a-f]{64}", d.source()), timeout=20)
    ok("the device page names the gateway it is attached to")
    d.shot("04-device")

    # Revoke, after the confirmation page.
    d.click_to(f"a[href='/console/devices/{dev}/revoke']", "Revoking is final")
    check("Revoking is final" in d.source(), "revoking asks for confirmation first")
    d.shot("05-confirm-revoke")
    d.click_to("button.danger[type=submit]", "status-revoked")
    check("status-revoked" in d.source(), "the device is revoked")
    d.shot("06-revoked")
    wait_for("the gateway closing the session", lambda: "peripheral revoked or suspended: session closed" in read(glog_path), timeout=10)
    ok("the device's live session closed on its gateway")
    check("closed by the gateway (revoked)" in wait_for("the device's log", lambda: read(plog_path) if "revoked" in read(plog_path) else "", timeout=10),
          "the device was told its session closed as revoked")

    # A POST without the CSRF token, with the operator's own session cookie.
    jar = f"__Host-vouch_console={cookie.get('value', '')}"
    ctx = ssl.create_default_context(cafile=os.path.join(vb, "ca.pem"))
    ctx.check_hostname = False
    req = urllib.request.Request(f"{backend}/console/devices/{dev}/suspend", method="POST",
                                 data=b"confirmed=yes", headers={"Cookie": jar, "Content-Type": "application/x-www-form-urlencoded",
                                                                  "Sec-Fetch-Site": "same-origin"})
    try:
        urllib.request.urlopen(req, context=ctx, timeout=10)
        bad("a POST without the CSRF token was accepted")
    except urllib.error.HTTPError as e:
        check(e.code == 403 and b"csrf" in e.read(), f"a POST without the CSRF token is refused ({e.code})")

    # An import with a dry run.
    d.go(f"{backend}/console/import")
    key = run(P, "keygen", "--dir", os.path.join(os.path.dirname(vb), "vp2"), "--group", "meters")
    pk = json.loads(key)["public_key"]
    upload = os.path.join(os.path.dirname(vb), "factory-batch.csv")
    with open(upload, "w") as f:
        f.write(f"public_key,group\n{pk},meters\nnot-a-key,meters\n")
    d.type("input[name=file]", upload)
    d.shot("07-import")
    d.click_to("div.actions button[type=submit]", "Import report")
    src = d.source()
    check("Dry run" in src and "would_create" in src and "invalid_public_key" in src, "the dry run of an uploaded file reports every row")
    d.shot("08-import-report")
    listed = json.loads(run(B, "--data-dir", vb, "--json", "list", "peripheral"))["items"]
    check(len(listed) == 1, "the dry run wrote nothing")

    # The gateway and audit pages.
    d.go(f"{backend}/console/gateways")
    check("yes" in d.source(), "the gateway shows online")
    d.shot("09-gateways")
    d.go(f"{backend}/console/audit?peripheral={dev}")
    check("operator:otto" in d.source(), "the audit log names the operator who revoked")
    d.shot("10-audit")

    # A viewer: no action buttons on an active device, and the action's page
    # refused anyway.
    other = json.loads(run(P, "keygen", "--dir", os.path.join(os.path.dirname(vb), "vp3"), "--group", "meters"))
    rows = os.path.join(os.path.dirname(vb), "other.ndjson")
    with open(rows, "w") as f:
        f.write(json.dumps(other) + "\n")
    run(B, "--data-dir", vb, "import", rows)
    active = json.loads(run(B, "--data-dir", vb, "--json", "list", "peripheral", "--status", "active"))["items"][0]["id"]
    d.go(f"{backend}/console/devices/{active}")
    check(d.finds("a[href$='/revoke']"), "an operator sees the revoke button of an active device")
    d.click("header form button")
    check(wait_for("the login page", lambda: d.current().endswith("/console/login"), timeout=10),
          "logging out returns to the login page")
    login(d, backend, tokens["vera"])
    d.go(f"{backend}/console/devices/{active}")
    src = d.source()
    check("status-active" in src and not d.finds("a[href$='/revoke']") and not d.finds("a[href$='/suspend']"),
          "a viewer sees no revoke or suspend button")
    d.shot("11-viewer-device")
    d.go(f"{backend}/console/devices/{active}/revoke")
    src = d.source()
    check("forbidden" in src, "a viewer is refused an action's page")
    d.shot("12-viewer-refused")


if __name__ == "__main__":
    main()
