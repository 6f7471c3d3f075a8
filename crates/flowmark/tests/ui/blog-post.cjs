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
    await sam.getByLabel('Title').fill('Brand guidelines');
    await sam.getByLabel('Link').fill('https://docs.example.com/brand');
    await sam.getByRole('button', { name: 'Attach' }).click();
    await sam.locator('ul.attachments').getByRole('link', { name: 'Brand guidelines' }).waitFor();
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

    // Someone with no role in the workflow cannot start the review over with a "new version".
    const rex = await signIn(browser, 'rex@example.com');
    await rex.goto(`${base}/ui/items/post-1`);
    await rex.getByLabel('Title').fill('My version');
    await rex.getByLabel('Link').fill('https://docs.example.com/rex');
    await rex.getByLabel('A new version of the deliverable').check();
    await rex.getByRole('button', { name: 'Attach' }).click();
    await rex.getByRole('alert').filter({ hasText: 'only the people responsible or accountable' }).waitFor();
    await shot(rex, '05b-outsider-reset-refused');

    // Keyboard shortcuts: `g f` goes to the workflows, each shown with its graph.
    await lee.keyboard.press('g');
    await lee.keyboard.press('f');
    await lee.getByRole('heading', { name: 'Workflows', exact: true }).waitFor();
    const thumb = lee.getByRole('img', { name: /The steps of Blog post/ });
    await thumb.waitFor();
    check(await thumb.evaluate((img) => img.complete && img.naturalWidth > 200), 'the workflow graph is drawn');
    // The workflow's page counts the run waiting at the review; the count opens the run explorer.
    await lee.getByRole('link', { name: 'Blog post', exact: true }).click();
    const review = lee.getByRole('row').filter({ has: lee.getByRole('cell', { name: /^review/ }) });
    await review.getByRole('link', { name: '1' }).click();
    await lee.getByRole('heading', { name: 'Runs' }).waitFor();
    check(await lee.getByLabel('At step').inputValue() === 'review', 'the explorer is filtered by the step');
    check((await lee.locator('table.runs tbody tr').count()) === 1, 'one run waits at the review');
    // The filter form: `/` focuses it; another step finds nothing.
    await lee.keyboard.press('/');
    await lee.getByLabel('At step').fill('publish');
    await lee.getByLabel('At step').press('Enter');
    await lee.getByText('No runs match.').waitFor();
    await lee.getByLabel('At step').fill('review');
    await lee.getByRole('button', { name: 'Filter' }).click();
    // `j` focuses the first row, Enter opens the run: where it stands, its history and decisions.
    await lee.locator('table.runs').waitFor();
    await lee.keyboard.press('j');
    await lee.keyboard.press('Enter');
    await lee.getByRole('heading', { name: /Run #\d+/ }).waitFor();
    const graph = lee.getByRole('img', { name: /the run stands at review/ });
    await graph.waitFor();
    check(await graph.evaluate((img) => img.complete && img.naturalWidth > 200), 'the run graph is drawn');
    await lee.locator('table.history').getByRole('cell', { name: 'approval decision', exact: true }).first().waitFor();
    check((await lee.locator('table.decisions tbody tr').count()) > 0, 'the run shows its decision records');
    await lee.locator('table.decisions').getByRole('cell', { name: 'changes_requested' }).first().waitFor();
    await shot(lee, '07-run-explorer');

    // The content calendar: the review's due date and the post's publication, month and week.
    await lee.keyboard.press('g');
    await lee.keyboard.press('c');
    await lee.getByRole('heading', { name: 'Content calendar' }).waitFor();
    await lee.locator('td.today').getByRole('link', { name: /Approve “Spring launch”/ }).first().waitFor();
    await lee.locator('li.publication').getByRole('link', { name: 'Spring launch' }).waitFor();
    await shot(lee, '08-calendar-month');
    await lee.getByRole('link', { name: 'Week view' }).click();
    await lee.locator('table.calendar.week').waitFor();
    check((await lee.locator('table.calendar.week td').count()) === 7, 'a week has seven days');
    await lee.locator('td.today li.due').first().waitFor();
    await lee.getByRole('link', { name: 'Show only my work' }).click();
    // Escalated to, the accountable person may decide the review too: it is their work now.
    await lee.locator('li.due').first().waitFor();
    check((await lee.locator('li.due').count()) > 0, 'the escalated review waits for the accountable person too');
    await shot(lee, '09-calendar-week');

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
