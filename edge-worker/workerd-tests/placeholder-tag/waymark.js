/* PLACEHOLDER: not the Waymark tag. Build js/dist to bundle the real one. */
export const placeholder = true;
