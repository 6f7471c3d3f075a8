// The blog post through the web UI, as its people do it, in headless Chromium.
// Run by crates/flowmark/tests/it/ui.rs with BASE_URL, PASSWORD and SHOTS set and
// NODE_PATH pointing at an installed playwright-core.
const { chromium } = require('playwright-core');

const base = process.env.BASE_URL;
const password = process.env.PASSWORD;
const shots = process.env.SHOTS;

function check(condition, message) {
  if (!condition) throw new Error(message);
}

async function signIn(browser, email) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  const page = await context.newPage();
  await page.goto(`${base}/ui`);
  check(page.url().includes('/ui/login'), `an anonymous visit goes to sign-in, not ${page.url()}`);
  await page.getByLabel('Email').fill(email);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('heading', { name: 'My work' }).waitFor();
  return page;
}

async function shot(page, name) {
  await page.screenshot({ path: `${shots}/${name}.png`, fullPage: true });
}

async function openWork(page, section, title) {
  await page.goto(`${base}/ui`);
  const link = page.getByRole('region', { name: section }).getByRole('link', { name: title });
  await link.first().click();
  await page.getByRole('heading', { name: title }).waitFor();
}

(async () => {
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  try {
    // A wrong password is refused with a message, and nothing opens.
    const stranger = await (await browser.newContext()).newPage();
    await stranger.goto(`${base}/ui/login`);
    await stranger.getByLabel('Email').fill('sam@example.com');
    await stranger.getByLabel('Password').fill('not-the-password');
    await stranger.getByRole('button', { name: 'Sign in' }).click();
    await stranger.getByRole('alert').filter({ hasText: 'Wrong email or password' }).waitFor();

    // A sign-in posted from another site is refused, even with the right password.
    const crossSite = await stranger.request.post(`${base}/ui/login`, {
      form: { email: 'sam@example.com', password }, headers: { Origin: 'http://evil.example' }, maxRedirects: 0 });
    check(crossSite.status() === 403, `a cross-site sign-in is refused, not ${crossSite.status()}`);

    // The writer completes the draft.
    const sam = await signIn(browser, 'sam@example.com');
    await shot(sam, '01-writer-my-work');
    // A form without the session's CSRF token changes nothing.
    const href = await sam.getByRole('region', { name: /My tasks/ }).getByRole('link', { name: 'Draft Spring launch' })
      .getAttribute('href');
    const forged = await sam.request.post(`${base}${href}/claim`, { form: { csrf: 'forged' }, maxRedirects: 0 });
    check(forged.status() === 403, `a forged form is refused, not ${forged.status()}`);
    await sam.reload();
    check((await sam.getByText('claimed by').count()) === 0, 'the forged claim changed nothing');
    await openWork(sam, /My tasks/, 'Draft Spring launch');
    await sam.getByLabel(/draft url/).fill('https://docs.example.com/spring-1');
    await shot(sam, '02-writer-draft-task');
    await sam.getByRole('button', { name: 'Complete task' }).click();
    await sam.getByText('completed by sam@example.com').waitFor();

    // Two reviewers in parallel: the editor approves, SEO asks for changes.
    const dana = await signIn(browser, 'dana@example.com');
    const sia = await signIn(browser, 'sia@example.com');
    await openWork(dana, /Waiting for my approval/, 'Approve “Spring launch” (review)');
    await dana.getByLabel('Decision comment').fill('Reads well.');
    await shot(dana, '03-editor-approval');
    await dana.getByRole('button', { name: 'Approve', exact: true }).click();
    await dana.getByText('approve by dana@example.com').waitFor();
    await openWork(sia, /Waiting for my approval/, 'Approve “Spring launch” (review)');
    await sia.getByLabel('Decision comment').fill('Needs the target keywords in the title.');
    await sia.getByRole('button', { name: 'Request changes' }).click();
    await sia.getByText('request changes by sia@example.com').waitFor();

    // The run loops back: a fresh draft task for the writer, the history on the item page.
    await sam.goto(`${base}/ui`);
    await openWork(sam, /My tasks/, 'Draft Spring launch');
    await sam.getByLabel(/draft url/).fill('https://docs.example.com/spring-2');
    await sam.getByRole('button', { name: 'Complete task' }).click();
    await sam.getByText('completed by sam@example.com').waitFor();
    await sam.getByRole('link', { name: 'post-1' }).first().click();
    await sam.getByRole('cell', { name: /request changes by sia@example.com/ }).waitFor();
    await sam.getByLabel('Add a comment').fill('Second draft is up, @dana@example.com.');
    await sam.getByRole('button', { name: 'Comment' }).click();
    await sam.getByText('Second draft is up').waitFor();
    await shot(sam, '04-item-history');

    // Nobody decides the second round: past the deadline, the Accountable person hears of it.
    const lee = await signIn(browser, 'lee@example.com');
    let escalated = false;
    for (let i = 0; i < 60 && !escalated; i++) {
      await lee.goto(`${base}/ui`);
      escalated = (await lee.getByText(/waiting past its deadline/).count()) > 0;
      if (!escalated) await lee.waitForTimeout(500);
    }
    check(escalated, 'the escalation reached the accountable person');
    await shot(lee, '05-accountable-escalation');

    // Keyboard: the sign-out button is reachable and labelled.
    await dana.goto(`${base}/ui`);
    await dana.getByText(/mentioned you/).waitFor();
    await dana.getByRole('button', { name: 'Sign out' }).focus();
    await dana.keyboard.press('Enter');
    await dana.getByRole('heading', { name: 'Sign in to Flowmark' }).waitFor();
    await shot(dana, '06-signed-out');
    console.log('ok');
  } finally {
    await browser.close();
  }
})().catch((error) => {
  console.error(error);
  process.exit(1);
});
