// Starts kinesalite on 127.0.0.1 only (its own command line listens on every
// interface): node scripts/kinesalite.js PORT
const kinesalite = require(process.env.KINESALITE_MODULE || 'kinesalite');
const port = Number(process.argv[2]);
kinesalite({ createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 1000 })
  .listen(port, '127.0.0.1', () => console.log(`kinesalite listening on 127.0.0.1:${port}`));
