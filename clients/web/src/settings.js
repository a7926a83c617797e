// The dashboard's settings, all from its URL so that a link carries them:
//
//   ?page=<name>             the presence page it views (default dashboard)
//   ?prefix=<level>          the plugin's plugin_opt_prefix (default counters)
//   ?presence_prefix=<level> its plugin_opt_presence_prefix (default presence)
//   ?nodes=<url>,<url>...    the dashboards of the cluster's other nodes
//
// `nodes` is needed because the stats each node publishes on $tally/stats/
// name the node but not where its WebSocket listener is. With it, the page
// fails over to another node when its own stays down, and links to each.

import { nameProblem } from '../elements/src/names.js';

export { brokerUrl } from '../elements/src/broker.js';

export const DEFAULT_PAGE = 'dashboard';
export const DEFAULT_PREFIX = 'counters';
export const DEFAULT_PRESENCE_PREFIX = 'presence';

// A topic level from the query, or dflt when absent or not a valid name.
function level(query, key, dflt) {
  const v = query.get(key);
  return v !== null && nameProblem(v) === null ? v : dflt;
}

// The http(s) origins of ?nodes=, here (this page's origin) first, each once.
function nodeOrigins(list, here) {
  const origins = [here];
  for (const item of (list ?? '').split(',')) {
    try {
      const url = new URL(item.trim());
      if ((url.protocol === 'http:' || url.protocol === 'https:') && !origins.includes(url.origin)) {
        origins.push(url.origin);
      }
    } catch {
      // not a URL: ignored, as a bad ?page= is
    }
  }
  return origins;
}

// search: location.search; here: location.origin.
export function readSettings(search, here) {
  const query = new URLSearchParams(search);
  const prefix = level(query, 'prefix', DEFAULT_PREFIX);
  const presence = level(query, 'presence_prefix', DEFAULT_PRESENCE_PREFIX);
  return {
    page: level(query, 'page', DEFAULT_PAGE),
    prefix,
    // The plugin refuses equal prefixes; so does the page.
    presencePrefix: presence === prefix ? DEFAULT_PRESENCE_PREFIX : presence,
    nodes: nodeOrigins(query.get('nodes'), here),
  };
}
