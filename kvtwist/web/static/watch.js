/**
 * Follows /v1/watch (Server-Sent Events) with fetch() streaming rather than
 * EventSource: EventSource cannot send the Authorization header. Reconnects
 * after a drop, resuming after the last whole commit it saw (?after=), and
 * starts again from "now" when the server says that point is gone (410).
 */

import { call } from "./api.js";

const RETRY_MS = 1000;

function sleep(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

export class Watcher {
  /**
   * @param onEvent called with {id, type, data} for each change event
   * @param onState called with ("on" | "off" | "connecting" | "retry" | "denied", error?)
   */
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.controller = null;
  }

  get running() {
    return this.controller !== null;
  }

  /**
   * (Re)start following keys under `prefix`: from now, or from just after
   * revision `after` (so that nothing since a read at that revision is
   * missed while the stream opens).
   */
  start(prefix, after = null) {
    this.stop();
    this.controller = new AbortController();
    this.loop(prefix, this.controller.signal, after);
  }

  stop() {
    if (this.controller) this.controller.abort();
    this.controller = null;
    this.onState("off");
  }

  async loop(prefix, signal, after) {
    while (!signal.aborted) {
      this.onState("connecting");
      try {
        const response = await call("GET", "v1/watch", {
          params: { prefix, after }, signal, headers: { Accept: "text/event-stream" },
        });
        this.onState("on");
        await this.read(response.body, signal, (event) => {
          // Resume after whole commits only: every event but the last of a
          // commit says more_in_commit. A progress event is a resume point
          // (the stream is complete up to its id), not a change.
          const partial = event.data && event.data.more_in_commit;
          if (event.id !== null && !partial) after = event.id;
          if (event.type !== "progress") this.onEvent(event);
        });
      } catch (error) {
        if (signal.aborted) return;
        if (error.status === 401 || error.status === 403) {
          // No point retrying with the same token: wait for a new one.
          if (this.controller && this.controller.signal === signal) this.controller = null;
          this.onState("denied", error);
          return;
        }
        if (error.status === 410) after = null;
        this.onState("retry", error);
      }
      await sleep(RETRY_MS, signal);
    }
  }

  /** Parse an SSE body (the text/event-stream format), one event at a time. */
  async read(body, signal, dispatch) {
    const reader = body.pipeThrough(new TextDecoderStream()).getReader();
    signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
    let buffer = "";
    let event = { id: null, type: "message", data: [] };
    for (;;) {
      const { value, done } = await reader.read();
      if (done || signal.aborted) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n")) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, "");
        buffer = buffer.slice(end + 1);
        if (line === "") {
          if (event.data.length) {
            let data;
            try { data = JSON.parse(event.data.join("\n")); } catch { data = event.data.join("\n"); }
            dispatch({ id: event.id, type: event.type, data });
          }
          event = { id: null, type: "message", data: [] };
          continue;
        }
        if (line.startsWith(":")) continue; // a heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") event.data.push(text);
        else if (field === "event") event.type = text;
        else if (field === "id") event.id = text;
      }
    }
  }
}
