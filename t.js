const { Analytics } = require('@segment/analytics-node');
const analytics = new Analytics({ writeKey: 'wk', host: process.argv[2], flushAt: 2, maxRetries: 0 });
analytics.on('error', (error) => console.log('ERR', error, error.reason && error.reason.cause));
analytics.track({ userId: 'hopper', event: 'Page Viewed', properties: { n: 1 } });
analytics.closeAndFlush({ timeout: 5000 }).then(() => console.log('done'));
