// Types of tally's embeddable elements (src/index.js). Importing the module
// defines <tally-counter>, <tally-viewers> and <tally-button>.

/** What an element uses where it has no attribute of its own. */
export interface TallyDefaults {
  /** ws:// or wss:// URL of a node's WebSocket listener, path /mqtt. Default: the node that served the script, else this page's host. */
  broker: string | null;
  username: string | null;
  password: string | null;
  /** The plugin's plugin_opt_prefix. Default "counters". */
  prefix: string;
  /** The plugin's plugin_opt_presence_prefix. Default "presence". */
  presencePrefix: string;
  /** Intl.NumberFormat locale, e.g. "de-DE". Default: the browser's. */
  locale: string | undefined;
}

export function configure(options: Partial<TallyDefaults>): void;

/** The state of an element's connection, in `tally-state` events. */
export interface TallyConnectionState {
  connected: boolean;
  /** Connected at least once: while not connected, the numbers shown are stale. */
  everConnected: boolean;
  /** When the connection was lost (ms since the epoch): the numbers are as of then. */
  lostAt: number | null;
  /** The CONNACK reason code of a refused login (0x86, 0x87), after which it stops retrying. */
  refused: number | null;
}

/**
 * Attributes of every element: broker, username, password, prefix,
 * presence-prefix, locale, notation ("standard", "compact", ...).
 * Reflected state: `stale` while the connection is down after it was up
 * (the title then says "as of <time>"), `invalid` when a name or prefix is
 * not a valid topic level, `login-refused` when the broker refused the login
 * (no retries then).
 */
declare class TallyElement extends HTMLElement {
  addEventListener<K extends keyof TallyEventMap>(
    type: K,
    listener: (this: this, ev: TallyEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject,
    options?: boolean | AddEventListenerOptions,
  ): void;
}

/** `<tally-counter name="likes">`: the counter's live total. */
export declare class TallyCounter extends TallyElement {
  /** The last total received, or null before the first. */
  readonly value: number | null;
}

/** `<tally-viewers page="launch">`: counts this reader as a viewer of the page and shows the count. */
export declare class TallyViewers extends TallyElement {
  /** The last viewer count received, or null before the first. */
  readonly value: number | null;
}

/** `<tally-button name="likes" delta="1">Like</tally-button>`: adds delta (default 1) to the counter. */
export declare class TallyButton extends TallyElement {}

export interface TallyEventMap extends HTMLElementEventMap {
  /** A counter's or page's new number. */
  'tally-change': CustomEvent<{ value: number }>;
  /** The connection changed. */
  'tally-state': CustomEvent<TallyConnectionState>;
  /** A button's increment was answered: reasonCode is the PUBACK's (below 0x80: accepted), -1 if the connection went first. */
  'tally-increment': CustomEvent<{ accepted: boolean; reasonCode: number }>;
}

declare global {
  interface HTMLElementTagNameMap {
    'tally-counter': TallyCounter;
    'tally-viewers': TallyViewers;
    'tally-button': TallyButton;
  }
}
