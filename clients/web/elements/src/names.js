// Counter and page names, as the contract defines them: one topic level of
// 1 to 200 bytes of UTF-8, none of `/ + #`, no control characters, not
// starting with `$`. Checked here so the form can say why before the broker
// refuses, and so a bad ?page= falls back instead of subscribing to a wildcard.

const encoder = new TextEncoder();

// Returns null for a valid name, else the reason it is not.
export function nameProblem(name) {
  if (name.length === 0) return 'name is empty';
  if (encoder.encode(name).length > 200) return 'name is longer than 200 bytes';
  if (name.startsWith('$')) return 'name may not start with $';
  if (/[/+#]/.test(name)) return 'name may not contain / + or #';
  if (/\p{Cc}/u.test(name)) return 'name may not contain control characters';
  return null;
}

// Signed decimal integer within what JavaScript holds exactly, or null.
export function parseTotal(text) {
  if (!/^[+-]?\d{1,16}$/.test(text)) return null;
  const n = Number(text);
  return Number.isSafeInteger(n) ? n : null;
}
