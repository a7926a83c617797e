// Signing in to a broker that requires a user name and password. The form is
// shown only when the broker refuses the connection for its credentials
// (CONNACK 0x86 bad user name or password, 0x87 not authorised), so a broker
// that lets anonymous clients in never shows it. The credentials are kept in
// sessionStorage: they last as long as this tab (a reload signs in again) and
// never reach the URL, localStorage or another tab.

const STORAGE_KEY = 'tally.login';

export const BAD_LOGIN = 0x86;
export const NOT_AUTHORISED = 0x87;

// Whether a connection error is the broker refusing who we are.
export function isLoginRefusal(err) {
  return err?.code === BAD_LOGIN || err?.code === NOT_AUTHORISED;
}

// The credentials stored for this tab, {username, password}, or null.
export function loadLogin() {
  try {
    const login = JSON.parse(sessionStorage.getItem(STORAGE_KEY));
    return typeof login?.username === 'string' && typeof login.password === 'string' ? login : null;
  } catch {
    return null;
  }
}

export function saveLogin(login) {
  sessionStorage.setItem(STORAGE_KEY, JSON.stringify(login));
}

export function forgetLogin() {
  sessionStorage.removeItem(STORAGE_KEY);
}

// Why a login was refused, in words for the form; null when no credentials
// were sent (the broker merely asks for some).
export function refusalText(code, login) {
  if (!login) return null;
  if (code === BAD_LOGIN) return 'Wrong user name or password.';
  // Mosquitto 2.0 answers a wrong password with this code too.
  return 'Refused: wrong user name or password, or this user may not connect.';
}

export class LoginPanel {
  // onSignIn({username, password}) when the form is submitted; onSignOut().
  constructor(formEl, accountEl, onSignIn, onSignOut) {
    this.formEl = formEl;
    this.accountEl = accountEl;
    this.userEl = formEl.querySelector('[data-testid="login-user"]');
    this.passEl = formEl.querySelector('[data-testid="login-pass"]');
    this.submitEl = formEl.querySelector('[data-testid="login-submit"]');
    this.errorEl = formEl.querySelector('[data-testid="login-error"]');
    this.whoEl = accountEl.querySelector('[data-testid="signed-in-user"]');

    formEl.addEventListener('submit', (event) => {
      event.preventDefault();
      const username = this.userEl.value.trim();
      const password = this.passEl.value;
      if (username === '') {
        this.userEl.focus();
        return;
      }
      this.submitEl.disabled = true;
      onSignIn({ username, password });
    });
    accountEl.querySelector('[data-testid="signout"]').addEventListener('click', onSignOut);
  }

  // Shows the form in place of the dashboard; error is null or why the last
  // attempt was refused.
  ask(error, username) {
    document.body.classList.add('signing-in');
    this.accountEl.hidden = true;
    this.formEl.hidden = false;
    this.submitEl.disabled = false;
    this.errorEl.textContent = error ?? '';
    if (username) this.userEl.value = username;
    this.passEl.value = '';
    (this.userEl.value === '' ? this.userEl : this.passEl).focus();
  }

  // Connected: as username, or anonymously when it is null.
  signedIn(username) {
    document.body.classList.remove('signing-in');
    this.formEl.hidden = true;
    this.passEl.value = '';
    this.errorEl.textContent = '';
    this.whoEl.textContent = username ?? '';
    this.accountEl.hidden = username === null;
  }
}
