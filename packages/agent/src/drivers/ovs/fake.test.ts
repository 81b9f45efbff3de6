import { vswitchContract } from './vswitch.contract.js';
import { FakeVSwitch } from './fake.js';

vswitchContract('FakeVSwitch', async () => {
  const sw = new FakeVSwitch();
  return { sw, addForeignPort: async (name) => void sw.foreign.add(name) };
});
