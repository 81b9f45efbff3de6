/** The one image of a simulation: its layer is in every simulated node's cache from the start. */
export const SIM_LAYER = `sha256:${'5'.repeat(64)}`;
export const SIM_IMAGE = 'sim:1';
