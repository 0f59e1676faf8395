/*
 * evlink's GraphQL playground: GraphiQL (vendored, see THIRD_PARTY.md) with a
 * field for the API key and the example tabs the page passes in its config.
 */
(function () {
  "use strict";

  var config = JSON.parse(document.getElementById("evlink-playground-config").textContent);
  var keyInput = document.getElementById("evlink-api-key");
  var KEY_STORAGE = "evlink:api-key";

  // Session storage: the key survives a reload but is forgotten with the tab.
  keyInput.value = sessionStorage.getItem(KEY_STORAGE) || "";
  keyInput.addEventListener("input", function () {
    sessionStorage.setItem(KEY_STORAGE, keyInput.value);
  });

  function currentKey() {
    // People paste the whole header value too.
    return keyInput.value.trim().replace(/^Bearer\s+/i, "");
  }

  function withKey(headers) {
    var merged = Object.assign({}, headers || {});
    var named = Object.keys(merged).some(function (name) {
      return name.toLowerCase() === "authorization";
    });
    var key = currentKey();
    if (key && !named) {
      merged.Authorization = "Bearer " + key;
    }
    return merged;
  }

  var wsScheme = window.location.protocol === "https:" ? "wss:" : "ws:";
  var toolkitFetcher = GraphiQL.createFetcher({
    url: config.graphqlPath,
    // graphql-ws (the graphql-transport-ws protocol): a new connection per
    // subscription, whose connection_init payload is the request's headers.
    subscriptionUrl: wsScheme + "//" + window.location.host + config.graphqlPath,
  });

  // GraphiQL passes the Headers tab to the fetcher; the key joins them there, so
  // HTTP requests and websocket connections carry the same Authorization.
  function fetcher(params, options) {
    var opts = Object.assign({}, options);
    opts.headers = withKey(opts.headers);
    return toolkitFetcher(params, opts);
  }

  ReactDOM.createRoot(document.getElementById("graphiql")).render(
    React.createElement(GraphiQL, {
      fetcher: fetcher,
      defaultTabs: config.tabs,
      defaultEditorToolsVisibility: "variables",
      shouldPersistHeaders: false,
    })
  );
})();
