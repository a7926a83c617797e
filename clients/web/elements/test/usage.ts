// Compiled (never run) by types.test.mjs: what a TypeScript user writes
// against tally-elements.d.ts. A wrong declaration fails the compile.

import { configure, TallyButton, TallyCounter } from 'tally-elements';

configure({ broker: 'wss://tally.example/mqtt', locale: 'de-DE' });

const likes = document.querySelector('tally-counter');
if (likes) {
  const n: number | null = likes.value;
  likes.addEventListener('tally-change', (e) => console.log(e.detail.value + (n ?? 0)));
  likes.addEventListener('tally-state', (e) => console.log(e.detail.connected, e.detail.lostAt));
}

const button: TallyButton = document.createElement('tally-button');
button.setAttribute('name', 'likes');
button.addEventListener('tally-increment', (e) => {
  const ok: boolean = e.detail.accepted;
  console.log(ok, e.detail.reasonCode);
});

const viewers = document.querySelector('tally-viewers');
const count: number | null = viewers?.value ?? null;
console.log(count, TallyCounter.name);
