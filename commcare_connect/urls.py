from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

urlpatterns = [
    path("admin/", admin.site.urls),
    # The standalone project has nothing but the admin: send visitors of / there.
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
]
