"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: Chromium reads commands
from fd 3 and writes replies and events to fd 4, each a JSON message ended by a NUL byte): a real browser with no
driver package and no network port. Debian's package: `apt-get install chromium`."""

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time

# the flags the project runs Chromium with: nothing fetched from Google, nothing kept between runs
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class BrowserError(Exception):
    pass


class Browser:
    def __init__(self, executable: str, width: int = 1400, height: int = 900, timeout: float = 60):
        self.timeout = timeout
        self.profile = tempfile.TemporaryDirectory(prefix="chromium-profile-")  # a fresh --user-data-dir
        commands_read, self._commands = os.pipe()
        self._replies, replies_write = os.pipe()
        # the child's ends moved to fd 10 and above, so that redirecting them to 3 and 4 overwrites neither
        commands_read, replies_write = (self._above_4(fd) for fd in (commands_read, replies_write))
        self.process = subprocess.Popen(
            # bash, not sh: Debian's dash takes single-digit fds only
            ["bash", "-c", f'exec "$0" "$@" 3<&{commands_read} 4>&{replies_write}', executable, *FLAGS,
             f"--user-data-dir={self.profile.name}", "--remote-debugging-pipe", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(commands_read, replies_write), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        self._buffer, self._next_id = b"", 0
        self.events: list[dict] = []  # every event received, in order: {"method", "params", "sessionId"}

    @staticmethod
    def _above_4(fd: int) -> int:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return moved

    def __enter__(self) -> "Browser":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._commands)
        os.close(self._replies)
        for _ in range(20):  # Chromium's helper processes may still be writing to the profile for a moment
            try:
                self.profile.cleanup()
                return
            except OSError:
                time.sleep(0.25)
        self.profile.cleanup()

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._replies], [], [], left)[0]:
                raise BrowserError("Chromium did not answer in time")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium exited (status {self.process.poll()})")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return event
            seen = len(self.events)
            message = self._message(deadline)
            if "method" in message:
                self.events.append(message)

    def open(self, url: str) -> str:
        """A new tab at url, loaded (its load event fired); returns the tab's session id. Raises BrowserError if
        the navigation itself fails (e.g. net::ERR_FILE_NOT_FOUND)."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable", session=session)
        navigation = self.send("Page.navigate", {"url": url}, session=session)
        if navigation.get("errorText"):
            raise BrowserError(f"{url}: {navigation['errorText']}")
        self.wait_for("Page.loadEventFired", session)
        return session

    def evaluate(self, session: str, expression: str):
        """The value of a JavaScript expression in the tab (a promise is awaited)."""
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": True}, session=session)
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:60]}…: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_until(self, session: str, expression: str, timeout: float = 60):
        """Poll a JavaScript expression until it is truthy (a single-page app renders when its data arrive)."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(session, expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"timed out waiting for {expression[:80]}")
            time.sleep(0.5)

    def click_text(self, session: str, text: str, within: str = "body", timeout: float = 30) -> None:
        """A real mouse click (pressed and released: menus that open on pointer-down open) on the first visible
        element inside `within` (a CSS selector) whose own text is `text`."""
        find = f"""(() => {{
            const own = e => [...e.childNodes].filter(n => n.nodeType === 3).map(n => n.textContent).join('').trim();
            const hit = [...document.querySelectorAll({json.dumps(within)})].flatMap(s => [...s.querySelectorAll('*')])
                .find(e => e.offsetParent !== null && own(e) === {json.dumps(text)});
            if (!hit) return null;
            const r = hit.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2];
        }})()"""
        x, y = self.wait_until(session, find, timeout)
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                      session=session)

    def failed_requests(self, session: str) -> list[str]:
        """URLs the tab asked for and could not load (a missing image, a missing stylesheet), with the reason."""
        urls = {e["params"]["requestId"]: e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent" and e.get("sessionId") == session}
        return [f"{urls.get(e['params']['requestId'], '?')}: {e['params']['errorText']}" for e in self.events
                if e["method"] == "Network.loadingFailed" and e.get("sessionId") == session]
