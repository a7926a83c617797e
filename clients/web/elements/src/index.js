// tally's embeddable elements: importing this module defines
// <tally-counter>, <tally-viewers> and <tally-button>. Loaded as the classic
// script a node serves (tally-elements.js), the elements connect back to
// that node unless told otherwise.

import { brokerUrl } from './broker.js';
import { configure, define } from './elements.js';

const script = typeof document !== 'undefined' ? document.currentScript : null;
if (script?.src) configure({ broker: brokerUrl(new URL(script.src).origin) });
define();

export { configure, TallyButton, TallyCounter, TallyViewers } from './elements.js';
