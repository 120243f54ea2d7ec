// Marp CLI settings for the deck (scripts/render.mjs passes this file).
export default {
  // The deck embeds its pictures as <img src="data:..."> and small <div>s for sources.
  html: true,
  // Nothing may be fetched when the deck is shown: no twemoji images from a CDN, no math fonts.
  options: {
    emoji: { shortcode: false, unicode: false },
    math: false,
  },
  // The bespoke template: keyboard navigation, #N page anchors, presenter view with the notes.
  template: "bespoke",
  bespoke: { progress: true, osc: false },
  allowLocalFiles: false,
};
