// tally's control API as a reader uses it: a request published (QoS 1) on
// $CONTROL/tally/v1 in Mosquitto dynamic-security's form,
// {"commands":[{"command":..., "correlationData":...}]}, and the answer that
// the plugin sends to this client alone on $CONTROL/tally/v1/response,
// {"responses":[{"command", "correlationData", "data" | "error"}]}. Answers
// are matched to requests by correlationData, so several may be in flight.
// Who may ask is the plugin's reader_usernames: anyone else's request is
// refused in its PUBACK (0x87).

export const CONTROL_TOPIC = '$CONTROL/tally/v1';
export const RESPONSE_TOPIC = `${CONTROL_TOPIC}/response`;

const TIMEOUT_MS = 5000;

export class ControlClient {
  // publish(topic, payload, done(err)): the MQTT client's, at QoS 1.
  constructor(publish) {
    this.publish = publish;
    this.tag = Math.random().toString(16).slice(2, 8);
    this.seq = 0;
    this.pending = new Map(); // correlationData -> {resolve, reject, timer}
  }

  // Resolves with the command's "data", or rejects with why not.
  request(command) {
    const id = `web-${this.tag}-${++this.seq}`;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => this.settle(id, new Error('no answer from the control API')), TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer });
      const payload = JSON.stringify({ commands: [{ ...command, correlationData: id }] });
      this.publish(CONTROL_TOPIC, payload, (err) => {
        if (err) this.settle(id, new Error(`the control API refused this user: ${err.message}`));
      });
    });
  }

  settle(id, error, data) {
    const entry = this.pending.get(id);
    if (!entry) return;
    this.pending.delete(id);
    clearTimeout(entry.timer);
    if (error) entry.reject(error);
    else entry.resolve(data);
  }

  // An answer on RESPONSE_TOPIC.
  onResponse(text) {
    let answer;
    try {
      answer = JSON.parse(text);
    } catch {
      return;
    }
    for (const r of Array.isArray(answer?.responses) ? answer.responses : []) {
      if (typeof r?.correlationData !== 'string') continue;
      if (r.error !== undefined) this.settle(r.correlationData, new Error(String(r.error)));
      else this.settle(r.correlationData, null, r.data ?? {});
    }
  }

  // The connection went: nothing in flight will be answered.
  failAll() {
    for (const id of [...this.pending.keys()]) this.settle(id, new Error('connection lost'));
  }
}
