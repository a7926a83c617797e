// Where a node's MQTT-over-WebSocket endpoint is: Mosquitto's WebSocket
// listener serves pages (http_dir) and MQTT (path /mqtt) on one port.

// The MQTT-over-WebSocket URL of the node that serves a page or script at origin.
export function brokerUrl(origin) {
  const url = new URL(origin);
  return `${url.protocol === 'https:' ? 'wss' : 'ws'}://${url.host}/mqtt`;
}
