// Starts Swagger UI on /docs. It is a file rather than an inline <script> so that the server's
// Content-Security-Policy can refuse every inline script (script-src 'self').
window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: new URL("openapi.json", document.baseURI).href,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
    validatorUrl: null,
  });
});
