const RealDate = Date;
const skew = 2 * 3600 * 1000;
class FastDate extends RealDate {
  constructor(...args) { if (args.length === 0) { super(RealDate.now() + skew); } else { super(...args); } }
}
globalThis.Date = FastDate;
const { Analytics } = require('@segment/analytics-node');
const analytics = new Analytics({ writeKey: 'wk', host: process.argv[2], flushAt: 2, maxRetries: 0 });
analytics.on('error', (error) => console.log('ERR', error, error.reason && error.reason.cause));
analytics.on('http_request', (r) => console.log('REQ', r.body.slice ? r.body.slice(0,400) : JSON.stringify(r.body).slice(0,400)));
analytics.track({ userId: 'hopper', event: 'Page Viewed', properties: { n: 1 } });
analytics.closeAndFlush({ timeout: 5000 }).then(() => console.log('done', new Date().toISOString()));
